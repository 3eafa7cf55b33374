"""DynamicBatcher pinned where mutation testing (scripts/mutation.sh) found it untested: defaults,
messages, statistics of both paths, the admission wait estimate, and the safety nets.

Order is controlled with events and a fake clock, as in test_batcher_dynamic.py; real time appears
only as upper bounds. A few checks read private state (`_forecast.finish`, `_runs`): the wait
estimate and the set of live run tasks have no public view.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from batcher import (
    BatcherStopped,
    BatchingPolicy,
    DeadlineExceeded,
    DynamicBatcher,
    ModelStats,
    Overloaded,
    Tensors,
)
from batcher.batch_io import cpu_timed
from batcher.errors import NotAccepting
from batcher.hop import CAP_S as CAP  # the margin after a batch run off the event loop
from batcher.hop import FLOOR_S as HOP  # the hop margin with no hop measured
from tests.support.thread_guard import shut_down_pools

LONG = 5.0  # an upper bound no healthy run comes near
LOOP = threading.current_thread().name


class Gated:
    """An async backend answering y = 2 * x; with a gate, every run waits for it."""

    def __init__(self, gate: asyncio.Event | None = None, answer: Callable[[Tensors], Tensors] | None = None):
        self.gate = gate
        self.answer = answer or (lambda inputs: {"y": inputs["x"] * 2})
        self.batches: list[list[float]] = []
        self.started = asyncio.Event()

    async def run(self, inputs: Tensors) -> Tensors:
        self.batches.append(inputs["x"][:, 0].tolist())
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        return self.answer(inputs)


class Blocking(Gated):
    """A RunsBlocking backend recording the thread and the asyncio task of each run."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="blocking")
        self.threads: list[str] = []
        self.tasks: list[asyncio.Task[Any] | None] = []

    @property
    def executor(self) -> ThreadPoolExecutor:
        return self.pool

    def run_blocking(self, inputs: Tensors) -> Tensors:
        self.threads.append(threading.current_thread().name)
        try:
            self.tasks.append(asyncio.current_task())
        except RuntimeError:  # no loop on an executor thread
            self.tasks.append(None)
        self.batches.append(inputs["x"][:, 0].tolist())
        return {"y": inputs["x"] * 2}


def x(rid: float, rows: int = 1) -> dict[str, np.ndarray[Any, Any]]:
    return {"x": np.full((rows, 2), rid, np.float32)}


async def turns_until(cond: Callable[[], bool], turns: int = 500) -> None:
    for _ in range(turns):
        if cond():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


Make = Callable[..., DynamicBatcher]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    made: list[DynamicBatcher] = []
    used: list[Any] = []

    def _make(
        *backends: Any,
        clock: Callable[[], float] = time.monotonic,
        stats: ModelStats | None = None,
        start: bool = True,
        **kw: Any,
    ) -> DynamicBatcher:
        inline = kw.pop("inline_max_s", None)
        policy = BatchingPolicy(**{"max_batch_size": 8, **kw})
        extra = {} if inline is None else {"inline_max_s": inline}
        b = DynamicBatcher(list(backends), policy, stats or ModelStats(), clock, **extra)
        if start:
            b.start()
        made.append(b)
        used.extend(backends)
        return b

    yield _make
    for b in made:
        await b.stop(drain=False, timeout_s=0.1)
    shut_down_pools(used)


def submit(b: DynamicBatcher, rid: float, rows: int = 1, **kw: Any) -> asyncio.Task[Tensors]:
    return asyncio.ensure_future(b.submit(x(rid, rows), rows, **kw))


async def result(task: Any, within: float = LONG) -> Tensors:
    out: Tensors = await asyncio.wait_for(task, within)
    return out


# -- construction, start, stop ---------------------------------------------------------------------


def test_no_backend_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^DynamicBatcher needs at least one backend instance$"):
        DynamicBatcher([], BatchingPolicy(max_batch_size=8), ModelStats())


async def test_accepting_start_once_and_a_quiet_stop(make: Make, caplog: pytest.LogCaptureFixture) -> None:
    b = make(Gated(), start=False)
    assert b.accepting is False
    b.start()
    assert b.accepting is True
    assert any(t.get_name() == "sluiceway-batcher-0" for t in asyncio.all_tasks())
    with pytest.raises(RuntimeError, match=r"^DynamicBatcher\.start\(\) may be called only once$"):
        b.start()
    with caplog.at_level(logging.WARNING):
        await result(submit(b, 1))
        await b.stop()
        await asyncio.sleep(0)  # done callbacks of the dispatch tasks
    assert b.accepting is False
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    stopped = make(Gated(), start=False)
    await stopped.stop()
    with pytest.raises(RuntimeError):
        stopped.start()


async def test_stop_drains_by_default(make: Make) -> None:
    gate = asyncio.Event()
    be = Gated(gate)
    b = make(be)
    running = submit(b, 1)
    await asyncio.wait_for(be.started.wait(), LONG)
    queued = submit(b, 2)
    await turns_until(lambda: b.queued_requests == 1)
    stopping = asyncio.ensure_future(b.stop())
    gate.set()
    await result(stopping)
    for rid, task in ((1, running), (2, queued)):
        assert ((await result(task))["y"] == 2 * rid).all()


STOPPED = r"^model stopped before the request was computed$"
RETIRED = r"^model version retired by a reload before the request was computed$"


@pytest.mark.parametrize(
    ("handover", "said", "queued_error", "queued_text"),
    [
        (False, "failing what is left", BatcherStopped, STOPPED),
        # A reload retiring the batcher: what is still queued fails NotAccepting, which its caller
        # resubmits to the new version; the run in progress still fails as stopped.
        (True, "handing what is queued over", NotAccepting, RETIRED),
    ],
)
async def test_stop_timeout_warns_and_answers_everything_before_returning(
    make: Make,
    caplog: pytest.LogCaptureFixture,
    handover: bool,
    said: str,
    queued_error: type[Exception],
    queued_text: str,
) -> None:
    be = Gated(asyncio.Event())  # never opens
    b = make(be, max_batch_size=1)
    running = submit(b, 1)
    await asyncio.wait_for(be.started.wait(), LONG)
    queued = submit(b, 2)
    await turns_until(lambda: b.queued_requests == 1)
    with caplog.at_level(logging.WARNING, logger="batcher.dynamic"):
        await asyncio.wait_for(b.stop(drain=True, timeout_s=0.01, handover=handover), LONG)
    assert running.done() and queued.done()  # stop returns once every request has its outcome
    assert f"batcher: stop timed out after 0.01 s; {said}" in caplog.messages
    with pytest.raises(queued_error, match=queued_text):
        await queued
    with pytest.raises(BatcherStopped, match=STOPPED) as run:
        await running
    assert not isinstance(run.value, NotAccepting)  # computing when cut: not to be sent again


async def test_a_failed_dispatch_task_fails_the_queue_and_stops_admitting(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    # A formation bug, made here with an admission record whose priority cannot be ordered.
    gate = asyncio.Event()
    be = Gated(gate)
    b = make(be)
    running = submit(b, 1)
    await asyncio.wait_for(be.started.wait(), LONG)
    good = asyncio.ensure_future(b.enqueue(x(2), b.admission(1)))
    bad = asyncio.ensure_future(b.enqueue(x(3), b.admission(1)._replace(priority=None)))  # type: ignore[arg-type]
    await turns_until(lambda: b.queued_requests == 2)
    with caplog.at_level(logging.ERROR, logger="batcher.dynamic"):
        gate.set()
        await result(running)
        for task in (good, bad):
            with pytest.raises(BatcherStopped):
                await result(task, within=2.0)
    assert b.accepting is False
    [record] = [r for r in caplog.records if r.name == "batcher.dynamic"]
    assert record.getMessage() == "batcher: dispatch task failed"
    assert record.exc_info is not None and isinstance(record.exc_info[1], TypeError)


# -- defaults --------------------------------------------------------------------------------------


async def test_without_inline_max_every_run_goes_to_the_executor(make: Make) -> None:
    be = Blocking()
    b = make(be)
    await result(submit(b, 1))
    await result(submit(b, 2))  # its size is known cheap by now, but inline runs are off
    assert len(be.threads) == 2 and all(t.startswith("blocking") for t in be.threads)


async def test_inline_max_zero_turns_the_fast_path_off(make: Make) -> None:
    b = make(Blocking())
    b.estimator.observe(1, 0.0, time.monotonic(), cpu_s=0.0, nbytes=1 << 20)  # even a run that cost nothing
    assert b.run_now(x(1), b.admission(1)) is None


async def test_priority_zero_is_the_default_level(make: Make) -> None:
    b = make(Gated(), priority_levels=3, default_priority=2)
    assert b.admission(1).priority == 2


# -- the fast path ---------------------------------------------------------------------------------


async def test_submit_takes_the_fast_path_once_with_its_statistics(make: Make) -> None:
    clock = Clock()
    stats = ModelStats()
    be = Blocking()
    b = make(be, clock=clock, stats=stats, inline_max_s=1.0)
    b.estimator.observe(1, 1.0, clock.now, cpu_s=0.0, nbytes=1 << 20)  # known cheap (and slow: see below)
    out = await b.submit(x(7), 1)
    np.testing.assert_array_equal(out["y"], x(7)["x"] * 2)
    assert be.threads == [LOOP] and be.tasks == [asyncio.current_task()]  # in the caller's task
    assert (stats.queue.count, stats.queue.ns) == (1, 0)
    assert (stats.compute_input.count, stats.compute_input.ns) == (1, 0)
    assert (stats.compute_output.count, stats.compute_output.ns) == (1, 0)
    assert stats.compute_infer.count == 1 and 0 < stats.compute_infer.ns < 1e9
    # The run was observed at `now`, in seconds: with the seeded 1 s run the bucket predicts
    # 1.5 x the faster (this) run; its CPU cost moved the EWMA off zero.
    assert b.estimator.predict(1, clock.now) < 0.5
    assert not b.estimator.cheap(1, 0.0)


def test_cpu_time_of_an_executor_run_is_what_the_run_spent() -> None:
    # This thread has spent CPU time before the run: only the run's own share counts.
    end = time.monotonic() + LONG
    while time.thread_time() < 0.2 and time.monotonic() < end:
        pass
    outputs, cpu_s = cpu_timed(lambda inputs: inputs, {})
    assert outputs == {} and 0.0 <= cpu_s < 0.1


# -- runs through the queue ------------------------------------------------------------------------


async def test_a_run_ending_exactly_at_the_deadline_is_in_time(make: Make) -> None:
    clock = Clock()
    gate = asyncio.Event()
    be = Gated(gate)
    b = make(be, clock=clock)
    exact = submit(b, 1, deadline=101.0)
    await asyncio.wait_for(be.started.wait(), LONG)
    clock.now = 101.0
    gate.set()
    assert ((await result(exact))["y"] == 2).all()
    be.gate = asyncio.Event()
    late = submit(b, 2, deadline=102.0)
    await turns_until(lambda: len(be.batches) == 2)
    clock.now = 102.5
    be.gate.set()
    with pytest.raises(DeadlineExceeded, match=r"^deadline exceeded while the request was being computed$"):
        await result(late)


async def test_queue_time_is_recorded_in_nanoseconds(make: Make) -> None:
    clock = Clock()
    gate = asyncio.Event()
    stats = ModelStats()
    be = Gated(gate)
    b = make(be, clock=clock, stats=stats)
    running = submit(b, 1)  # dispatched at once: 0 ns in the queue
    await asyncio.wait_for(be.started.wait(), LONG)
    waiting = submit(b, 2)
    await turns_until(lambda: b.queued_requests == 1)
    clock.now = 102.0
    gate.set()
    await result(running)
    await result(waiting)
    assert (stats.queue.count, stats.queue.ns) == (2, 2_000_000_000)
    assert stats.compute_input.ns < 1e9 and stats.compute_infer.ns < 1e9 and stats.compute_output.ns < 1e9
    await turns_until(lambda: not b._runs)  # finished run tasks are forgotten


async def test_formation_drops_what_the_estimate_says_would_be_late(make: Make) -> None:
    clock = Clock()
    gate = asyncio.Event()
    be = Gated(gate)
    b = make(be, clock=clock)
    running = submit(b, 1)
    await asyncio.wait_for(be.started.wait(), LONG)
    doomed = submit(b, 2, rows=2, deadline=101.0)  # admitted: nothing was known about run times
    await turns_until(lambda: b.queued_requests == 1)
    for _ in range(16):
        b.estimator.observe(2, 5.0, clock.now)  # now 2-row runs are known to take 5 s at least
    gate.set()
    with pytest.raises(DeadlineExceeded, match=r"^deadline cannot be met: about 5000\.0 ms of compute"):
        await result(doomed)
    await result(running)
    assert be.batches == [[1]]


async def test_waiting_for_a_batch_to_grow_ends_with_the_delay(make: Make) -> None:
    be = Gated()
    b = make(be, max_queue_delay_s=0.02)
    await result(submit(b, 1), within=0.5)  # waits 20 ms for company, then runs alone
    assert be.batches == [[1]]


async def test_a_batch_of_one_row_still_checks_the_backends_rows(make: Make) -> None:
    be = Gated(answer=lambda inputs: {"y": np.zeros((2, 2), np.float32)})
    b = make(be, max_batch_size=1)
    with pytest.raises(ValueError, match="for a batch of 1 rows"):
        await result(submit(b, 1))


async def test_a_model_without_batch_dimension_counts_one_row_a_run(make: Make) -> None:
    stats = ModelStats()
    b = make(Gated(), stats=stats, max_batch_size=0)
    await result(submit(b, 1))
    assert stats.inference_count == 1 and set(stats.batch_stats) == {1}


async def test_a_caller_gone_during_the_run_does_not_stop_the_others_answers(make: Make) -> None:
    gate = asyncio.Event()
    be = Gated(gate)
    b = make(be)
    gone, kept = submit(b, 1), submit(b, 2)
    await asyncio.wait_for(be.started.wait(), LONG)
    assert be.batches == [[1, 2]]
    gone.cancel()
    gate.set()
    assert ((await result(kept))["y"] == 4).all()


async def test_a_run_failing_outside_exception_answers_with_that_error(make: Make) -> None:
    class Halt(BaseException):
        pass

    def halt(inputs: Tensors) -> Tensors:
        raise Halt()

    b = make(Gated(answer=halt))
    with pytest.raises(Halt):
        await result(submit(b, 1))


async def test_a_batch_is_costed_and_placed_by_its_total_rows(make: Make) -> None:
    # 1-row runs are cheap and take 0.1 s, 2-row runs take 1 s and their cost is unknown.
    clock = Clock()
    be = Blocking()
    b = make(be, clock=clock, max_batch_size=2, max_queue_delay_s=LONG, inline_max_s=1.0)
    b.estimator.observe(1, 0.1, clock.now, cpu_s=0.0, nbytes=1 << 20)
    b.estimator.observe(2, 1.0, clock.now)
    tasks = [submit(b, 1), submit(b, 2)]
    for task in tasks:
        await result(task)
    assert be.batches == [[1, 2]] and be.threads[0].startswith("blocking")  # 2 rows: not inline


async def test_a_running_batch_counts_its_total_rows_in_the_wait_estimate(make: Make) -> None:
    clock = Clock()
    gate = asyncio.Event()
    be = Gated(gate)
    b = make(be, clock=clock)
    b.estimator.observe(1, 0.1, clock.now)
    b.estimator.observe(2, 1.0, clock.now)
    tasks = [submit(b, 1), submit(b, 2)]  # one batch of 2 rows: 1 s
    await asyncio.wait_for(be.started.wait(), LONG)
    with pytest.raises(Overloaded):  # 1 s left of the batch + its own 0.1 s > 0.5 s
        await result(b.submit(x(3), 1, deadline=100.5))
    gate.set()
    for task in tasks:
        await result(task)


# -- the wait estimate cuts the backlog as formation would, whatever the size of recent runs -------


def seeded(b: DynamicBatcher, now: float) -> None:
    b.estimator.observe(1, 1.0, now, cpu_s=0.0, nbytes=1 << 20)  # cheap
    b.estimator.observe(2, 1.0, now)
    b.estimator.observe(8, 0.01, now)  # 5..8 rows: 10 ms


async def test_fast_runs_leave_the_backlog_in_whole_batches(make: Make) -> None:
    clock = Clock()
    b = make(Blocking(), clock=clock, inline_max_s=1.0)
    seeded(b, clock.now)
    for i in range(12):
        assert b.run_now(x(i), b.admission(1)) is not None
    # 8 rows ahead: one batch of 8 (10 ms, and the hop margin), whatever size recent runs had (it had
    # followed them: 2 batches of 7 rows after one 1-row run).
    assert b._forecast.finish(1, 8) == pytest.approx(0.01 + HOP)


async def test_queued_runs_leave_the_backlog_in_whole_batches(make: Make) -> None:
    clock = Clock()
    b = make(Gated(), clock=clock)
    seeded(b, clock.now)
    await result(submit(b, 1))
    assert b._forecast.finish(1, 8) == pytest.approx(0.01 + CAP)
