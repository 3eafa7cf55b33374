"""DynamicBatcher with fake backends. Order is controlled with events (a gate the backend waits on),
not with sleeps: timing appears only as generous upper bounds.

Each request carries its id in column 0 of input "x"; the fake backend records the ids of every
batch it runs and answers y = 2 * x, so each caller can check it got its own rows back.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
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
    QueueFull,
    Tensors,
    TooManyRows,
)
from batcher.errors import InputsRefused, NotAccepting, QueueTimedOut
from tests.support.thread_guard import shut_down_pools

LONG = 5.0  # an upper bound no healthy run comes near


class FakeBackend:
    def __init__(self, gate: asyncio.Event | None = None, fail_on: float | None = None) -> None:
        self.batches: list[list[float]] = []
        self.gate = gate  # when set up, every run waits for it
        self.fail_on = fail_on  # a run containing this id raises
        self.running = 0
        self.most_running = 0
        self.started = asyncio.Event()

    async def run(self, inputs: Tensors) -> Tensors:
        x = inputs["x"]
        self.batches.append(x[:, 0].tolist() if x.ndim == 2 else [float(x[0])])
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        self.started.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.fail_on is not None and self.fail_on in x:
                raise RuntimeError("boom")
            return {"y": x * 2}
        finally:
            self.running -= 1


def x(rid: float, rows: int = 1) -> dict[str, np.ndarray[Any, Any]]:
    return {"x": np.full((rows, 2), rid, np.float32)}


async def turns_until(cond: Callable[[], bool], turns: int = 500) -> None:
    """Let the loop run until `cond` holds (a few turns, no sleeping)."""
    for _ in range(turns):
        if cond():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


MakeBatcher = Callable[..., DynamicBatcher]


@pytest.fixture
async def make() -> AsyncIterator[MakeBatcher]:
    made: list[DynamicBatcher] = []
    used: list[FakeBackend] = []

    def _make(
        *backends: FakeBackend, stats: ModelStats | None = None, inline_max_s: float = 0.0, **policy: Any
    ) -> DynamicBatcher:
        pol = BatchingPolicy(**{"max_batch_size": 8, **policy})
        b = DynamicBatcher(list(backends), pol, stats or ModelStats(), inline_max_s=inline_max_s)
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


async def result(task: Awaitable[Tensors]) -> Tensors:
    return await asyncio.wait_for(task, LONG)


async def test_single_request_round_trip_and_stats(make: MakeBatcher) -> None:
    stats = ModelStats()
    be = FakeBackend()
    b = make(be, stats=stats)
    out = await result(b.submit(x(7, rows=3), 3))
    np.testing.assert_array_equal(out["y"], np.full((3, 2), 14.0))
    assert be.batches == [[7, 7, 7]]
    assert stats.execution_count == 1 and stats.inference_count == 3
    assert stats.queue.count == 1
    assert stats.compute_infer.count == 1 and stats.batch_stats[3].compute_infer.count == 1
    assert b.queued_requests == 0 and b.in_flight_batches == 0


async def test_batches_grow_under_load_and_answers_are_scattered(make: MakeBatcher) -> None:
    stats = ModelStats()
    gate = asyncio.Event()
    be = FakeBackend(gate)
    b = make(be, stats=stats)
    first = submit(b, 1)
    await asyncio.wait_for(be.started.wait(), LONG)
    rest = [submit(b, rid, rows=2 if rid == 3 else 1) for rid in (2, 3, 4, 5)]
    await turns_until(lambda: b.queued_requests == 4)
    assert be.batches == [[1]]  # the backend is busy: nothing more was dispatched
    gate.set()
    outs = [await result(t) for t in (first, *rest)]
    assert be.batches == [[1], [2, 3, 3, 4, 5]]
    for rid, out in zip((1, 2, 3, 4, 5), outs, strict=True):
        assert (out["y"] == 2 * rid).all()
    assert outs[2]["y"].shape == (2, 2)
    assert stats.execution_count == 2 and stats.inference_count == 6
    assert set(stats.batch_stats) == {1, 5}
    assert stats.queue.count == 5
    assert stats.compute_infer.count == stats.compute_input.count == 5


async def test_full_queue_rejects_at_once(make: MakeBatcher) -> None:
    gate = asyncio.Event()
    be = FakeBackend(gate)
    b = make(be, max_queue_size=2)
    first = submit(b, 1)
    await asyncio.wait_for(be.started.wait(), LONG)
    queued = [submit(b, 2), submit(b, 3)]
    await turns_until(lambda: b.queued_requests == 2)
    with pytest.raises(QueueFull, match="Exceeds maximum queue size"):
        await result(b.submit(x(4), 1))
    gate.set()
    for t in (first, *queued):
        await result(t)
    assert 4 not in [rid for batch in be.batches for rid in batch]


async def test_request_expiring_in_queue_is_never_computed(make: MakeBatcher) -> None:
    gate = asyncio.Event()
    be = FakeBackend(gate)
    b = make(be)
    first = submit(b, 1)
    await asyncio.wait_for(be.started.wait(), LONG)
    doomed = submit(b, 2, timeout_s=0.05)
    with pytest.raises(DeadlineExceeded):
        await result(doomed)  # answered while the backend is still busy
    assert b.queued_requests == 0
    gate.set()
    await result(first)
    await result(submit(b, 3))
    assert be.batches == [[1], [3]]


async def test_expired_found_at_formation_is_dropped() -> None:
    # A fake clock jumps past the deadline; the request's timer (real time) has not fired yet,
    # so it is the formation that must drop it.
    now = [100.0]
    gate = asyncio.Event()
    be = FakeBackend(gate)
    b = DynamicBatcher([be], BatchingPolicy(max_batch_size=8), ModelStats(), clock=lambda: now[0])
    b.start()
    try:
        first = submit(b, 1)
        await asyncio.wait_for(be.started.wait(), LONG)
        doomed = submit(b, 2, deadline=110.0)
        await turns_until(lambda: b.queued_requests == 1)
        now[0] = 120.0
        gate.set()
        with pytest.raises(DeadlineExceeded):
            await result(doomed)
        await result(first)
        assert be.batches == [[1]]
    finally:
        await b.stop(drain=False, timeout_s=0.1)


async def test_admission_rejects_expired_or_hopeless_deadlines(make: MakeBatcher) -> None:
    b = make(FakeBackend())
    with pytest.raises(DeadlineExceeded):
        await result(b.submit(x(1), 1, deadline=0.0))  # long past on the monotonic clock
    b.estimator.observe(1, 10.0, time.monotonic())  # runs are known to take 10 s
    with pytest.raises(DeadlineExceeded, match="cannot be met"):
        await result(b.submit(x(2), 1, timeout_s=1.0))
    assert b.queued_requests == 0


async def test_admission_sheds_what_the_backlog_would_make_late() -> None:
    # Runs are known to take 1 s of the fake clock; one instance, one row a batch. A request is
    # admitted only if the running batch plus the queued work ahead of it plus its own run fit
    # before its deadline; shedding says Overloaded (RESOURCE_EXHAUSTED), not DeadlineExceeded.
    now = [100.0]
    gate = asyncio.Event()
    be = FakeBackend(gate)
    policy = BatchingPolicy(max_batch_size=1, priority_levels=2, default_priority=2)
    b = DynamicBatcher([be], policy, ModelStats(), clock=lambda: now[0])
    b.estimator.observe(1, 1.0, now[0])
    b.start()
    try:
        running = submit(b, 1)
        await asyncio.wait_for(be.started.wait(), LONG)  # ends at about 101
        second = submit(b, 2, deadline=102.5)  # 1 s left of the running batch + its own 1 s
        await turns_until(lambda: b.queued_requests == 1)
        with pytest.raises(Overloaded, match="ms left before the deadline") as shed:
            await result(b.submit(x(3), 1, deadline=102.5))  # behind #2: would end at 103
        assert isinstance(shed.value, QueueFull)
        urgent = submit(b, 4, deadline=102.5, priority=1)  # jumps the queue: ends at 102
        third = submit(b, 5, deadline=104.5)  # behind #1, #4 and #2: ends at 104
        await turns_until(lambda: b.queued_requests == 3)
        gate.set()
        for task in (running, second, urgent, third):
            await result(task)
        assert be.batches == [[1], [4], [2], [5]]
    finally:
        await b.stop(drain=False, timeout_s=0.1)


async def test_admission_divides_the_backlog_among_instances() -> None:
    now = [100.0]
    gate = asyncio.Event()
    backends = [FakeBackend(gate), FakeBackend(gate)]
    b = DynamicBatcher(backends, BatchingPolicy(max_batch_size=2), ModelStats(), clock=lambda: now[0])
    b.estimator.observe(1, 1.0, now[0])
    b.estimator.observe(2, 1.0, now[0])
    b.start()
    try:
        tasks = [submit(b, 1, rows=2), submit(b, 2, rows=2)]
        await turns_until(lambda: all(be.started.is_set() for be in backends))
        # Two running batches (1 s left each), then 4 queued rows in 2 batches of 2, one on each
        # instance as it frees: answered in about 2 s, so a deadline 2.5 s away is admitted, and
        # 1.5 s away is shed (formation would cut its batches to 1 row each, 1 s).
        tasks += [submit(b, 3, rows=2), submit(b, 4, rows=1)]
        await turns_until(lambda: b.queued_requests == 2)
        with pytest.raises(Overloaded):
            await result(b.submit(x(5), 1, deadline=101.5))
        tasks.append(submit(b, 6, rows=1, deadline=102.5))
        await turns_until(lambda: b.queued_requests == 3)
        gate.set()
        for task in tasks:
            await result(task)
    finally:
        await b.stop(drain=False, timeout_s=0.1)


async def test_cancelled_caller_is_never_computed(make: MakeBatcher) -> None:
    gate = asyncio.Event()
    be = FakeBackend(gate)
    b = make(be)
    first = submit(b, 1)
    await asyncio.wait_for(be.started.wait(), LONG)
    gone = submit(b, 2)
    kept = submit(b, 3)
    await turns_until(lambda: b.queued_requests == 2)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert b.queued_requests == 1
    gate.set()
    await result(first)
    await result(kept)
    assert be.batches == [[1], [3]]


async def test_priorities_are_honoured(make: MakeBatcher) -> None:
    gate = asyncio.Event()
    be = FakeBackend(gate)
    b = make(be, max_batch_size=1, priority_levels=3, default_priority=2)
    first = submit(b, 0)
    await asyncio.wait_for(be.started.wait(), LONG)
    tasks = [submit(b, 3, priority=3), submit(b, 2, priority=2), submit(b, 1, priority=1), submit(b, 20)]
    await turns_until(lambda: b.queued_requests == 4)
    gate.set()
    for t in (first, *tasks):
        await result(t)
    assert be.batches == [[0], [1], [2], [20], [3]]


async def test_a_priority_above_the_models_levels_is_its_default_level(make: MakeBatcher) -> None:
    # As Triton's InferenceRequest::SetPriority: 0 or a level the model lacks -> the default.
    gate = asyncio.Event()
    be = FakeBackend(gate)
    b = make(be, max_batch_size=1, priority_levels=3, default_priority=2)
    for priority, level in ((0, 2), (1, 1), (3, 3), (4, 2), (2**63 - 1, 2), (2**64 - 1, 2)):
        assert b.admission(1, priority=priority).priority == level
    first = submit(b, 0)
    await asyncio.wait_for(be.started.wait(), LONG)
    tasks = [submit(b, 3, priority=3), submit(b, 9, priority=2**63 - 1), submit(b, 1, priority=1)]
    await turns_until(lambda: b.queued_requests == 3)
    gate.set()
    for t in (first, *tasks):
        await result(t)
    assert be.batches == [[0], [1], [9], [3]]


async def test_bad_arguments(make: MakeBatcher) -> None:
    b = make(FakeBackend(), max_batch_size=4, priority_levels=2)
    with pytest.raises(ValueError, match="priority"):
        await result(b.submit(x(1), 1, priority=-1))
    with pytest.raises(TooManyRows, match="at most 4"):
        await result(b.submit(x(1, rows=5), 5))
    with pytest.raises(ValueError, match="rows"):
        await result(b.submit(x(1), 0))
    with pytest.raises(ValueError, match="timeout_s"):
        await result(b.submit(x(1), 1, timeout_s=0.0))
    assert b.queued_requests == 0


def test_bad_policy_names_the_field() -> None:
    with pytest.raises(ValueError, match="max_batches_in_flight"):
        DynamicBatcher(
            [FakeBackend()], BatchingPolicy(max_batch_size=1, max_batches_in_flight=0), ModelStats()
        )
    with pytest.raises(ValueError, match="default_priority"):
        DynamicBatcher([FakeBackend()], BatchingPolicy(max_batch_size=1, default_priority=2), ModelStats())


async def test_backend_error_fails_only_its_batch(make: MakeBatcher) -> None:
    stats = ModelStats()
    gate = asyncio.Event()
    be = FakeBackend(gate, fail_on=666)
    b = make(be, stats=stats)
    first = submit(b, 1)
    await asyncio.wait_for(be.started.wait(), LONG)
    bad = submit(b, 666)
    neighbour = submit(b, 2)  # same batch as the bad one: fails with it
    await turns_until(lambda: b.queued_requests == 2)
    gate.set()
    await result(first)
    for t in (bad, neighbour):
        with pytest.raises(RuntimeError, match="boom"):
            await result(t)
    out = await result(submit(b, 3))  # the loop keeps serving
    assert (out["y"] == 6).all()
    assert be.batches == [[1], [666, 2], [3]]
    assert stats.execution_count == 2


async def test_output_with_wrong_rows_fails_the_batch(make: MakeBatcher) -> None:
    class Truncating(FakeBackend):
        async def run(self, inputs: Tensors) -> Tensors:
            return {"y": inputs["x"][:1]}

    b = make(Truncating())
    with pytest.raises(ValueError, match="'y'"):
        await result(b.submit(x(1, rows=2), 2))


async def test_unbatched_model_runs_one_request_per_batch(make: MakeBatcher) -> None:
    gate = asyncio.Event()
    be = FakeBackend(gate)
    b = make(be, max_batch_size=0)
    tasks = [asyncio.ensure_future(b.submit({"x": np.array([float(i), 0.0])}, 1)) for i in range(3)]
    await asyncio.wait_for(be.started.wait(), LONG)
    gate.set()
    outs = [await result(t) for t in tasks]
    assert be.batches == [[0.0], [1.0], [2.0]]
    assert outs[2]["y"].tolist() == [4.0, 0.0]


async def test_queue_delay_lets_a_batch_grow(make: MakeBatcher) -> None:
    be = FakeBackend()
    b = make(be, max_batch_size=2, max_queue_delay_s=LONG)
    a = submit(b, 1)
    await turns_until(lambda: b.queued_requests == 1)
    for _ in range(20):
        await asyncio.sleep(0)
    assert be.batches == []  # waiting for growth, not dispatched
    c = submit(b, 2)  # makes the batch full: it goes at once, not after LONG
    await result(a)
    await result(c)
    assert be.batches == [[1, 2]]


async def test_queue_delay_expires_and_partial_batch_runs(make: MakeBatcher) -> None:
    be = FakeBackend()
    b = make(be, max_batch_size=4, max_queue_delay_s=0.02)
    await result(b.submit(x(1), 1))
    assert be.batches == [[1]]


async def test_instances_share_one_queue(make: MakeBatcher) -> None:
    gate = asyncio.Event()
    one, two = FakeBackend(gate), FakeBackend(gate)
    b = make(one, two)
    first = submit(b, 1)
    await turns_until(lambda: one.started.is_set() or two.started.is_set())
    second = submit(b, 2)
    await asyncio.wait_for(asyncio.gather(one.started.wait(), two.started.wait()), LONG)
    assert b.in_flight_batches == 2
    gate.set()
    await result(first)
    await result(second)
    assert sorted(one.batches + two.batches) == [[1], [2]]


async def test_batches_in_flight_per_instance_is_bounded(make: MakeBatcher) -> None:
    gate = asyncio.Event()
    be = FakeBackend(gate)
    b = make(be, max_batches_in_flight=2)
    tasks = [submit(b, 1)]
    await turns_until(lambda: be.running == 1)
    tasks.append(submit(b, 2))
    await turns_until(lambda: be.running == 2)
    tasks += [submit(b, 3), submit(b, 4)]
    await turns_until(lambda: b.queued_requests == 2)
    assert b.in_flight_batches == 2 and be.running == 2
    gate.set()
    for t in tasks:
        await result(t)
    assert be.most_running == 2
    assert be.batches == [[1], [2], [3, 4]]


async def test_submit_before_start_is_refused() -> None:
    b = DynamicBatcher([FakeBackend()], BatchingPolicy(max_batch_size=1), ModelStats())
    with pytest.raises(BatcherStopped):
        await result(b.submit(x(1), 1))


async def test_stop_with_drain_finishes_queued_and_running(make: MakeBatcher) -> None:
    gate = asyncio.Event()
    be = FakeBackend(gate)
    b = make(be, max_batch_size=2, max_queue_delay_s=LONG)
    tasks = [submit(b, 1), submit(b, 2)]  # a full batch: goes at once
    await asyncio.wait_for(be.started.wait(), LONG)
    tasks.append(submit(b, 3))  # would wait LONG to grow, but not while stopping
    await turns_until(lambda: b.queued_requests == 1)
    stopping = asyncio.ensure_future(b.stop(drain=True, timeout_s=LONG))
    await turns_until(lambda: not b.accepting)
    with pytest.raises(BatcherStopped):
        await result(b.submit(x(4), 1))
    gate.set()
    await asyncio.wait_for(stopping, LONG)
    for t in tasks:
        await result(t)
    assert be.batches == [[1, 2], [3]]


async def test_stop_without_drain_fails_queued_at_once(make: MakeBatcher) -> None:
    gate = asyncio.Event()
    be = FakeBackend(gate)
    b = make(be)
    running = submit(b, 1)
    await asyncio.wait_for(be.started.wait(), LONG)
    queued = [submit(b, 2), submit(b, 3)]
    await turns_until(lambda: b.queued_requests == 2)
    stopping = asyncio.ensure_future(b.stop(drain=False, timeout_s=LONG))
    for t in queued:
        with pytest.raises(BatcherStopped):
            await result(t)
    gate.set()  # the running batch may still finish
    await asyncio.wait_for(stopping, LONG)
    await result(running)
    assert be.batches == [[1]]


async def test_stop_timeout_fails_what_is_left(make: MakeBatcher) -> None:
    be = FakeBackend(asyncio.Event())  # never opens
    b = make(be, max_batch_size=1)
    tasks = [submit(b, 1)]
    await asyncio.wait_for(be.started.wait(), LONG)
    tasks.append(submit(b, 2))
    await turns_until(lambda: b.queued_requests == 1)
    await asyncio.wait_for(b.stop(drain=True, timeout_s=0.05), LONG)
    for t in tasks:
        with pytest.raises(BatcherStopped):
            await result(t)
    assert b.in_flight_batches == 0 and b.queued_requests == 0


async def test_every_request_gets_exactly_one_outcome_under_churn() -> None:
    """Seeded chaos: cancels, short timeouts, a failing id, two instances, then a stop."""
    rng = random.Random(1234)

    class Jittery(FakeBackend):
        async def run(self, inputs: Tensors) -> Tensors:
            for _ in range(rng.randrange(4)):
                await asyncio.sleep(0)
            return await super().run(inputs)

    stats = ModelStats()
    backends = [Jittery(fail_on=13), Jittery(fail_on=13)]
    b = DynamicBatcher(
        backends,
        BatchingPolicy(max_batch_size=6, max_queue_size=40, priority_levels=3, max_batches_in_flight=2),
        stats,
    )
    b.start()
    tasks: list[tuple[int, asyncio.Task[Tensors]]] = []
    for rid in range(400):
        kw: dict[str, Any] = {"priority": rng.randrange(4)}
        if rng.random() < 0.2:
            kw["timeout_s"] = rng.choice((1e-4, 1e-3, 1.0))
        tasks.append((rid, submit(b, rid, rows=rng.randrange(1, 4), **kw)))
        if rng.random() < 0.1:
            tasks[rng.randrange(len(tasks))][1].cancel()
        if rng.random() < 0.3:
            await asyncio.sleep(0)
    stopping = asyncio.ensure_future(b.stop(drain=rng.random() < 0.5, timeout_s=LONG))
    _, pending = await asyncio.wait([t for _, t in tasks], timeout=LONG)
    assert not pending, "a request got no outcome"
    await asyncio.wait_for(stopping, LONG)
    allowed = (DeadlineExceeded, QueueFull, BatcherStopped, RuntimeError)
    answered = 0
    for rid, t in tasks:
        if t.cancelled():
            continue
        exc = t.exception()
        if exc is None:
            assert (t.result()["y"] == 2 * rid).all()
            answered += 1
        else:
            assert isinstance(exc, allowed), exc
    assert answered > 0
    assert b.queued_requests == 0 and b.in_flight_batches == 0
    batches = [batch for be in backends for batch in be.batches]
    assert all(0 < len(batch) <= 6 for batch in batches)  # rows, within max_batch_size
    computed = [batch for batch in batches if 13 not in batch]
    # Rows out, less those of requests their run ended too late for (Triton counts successes only).
    late = {
        rid
        for rid, t in tasks
        if not t.cancelled()
        and isinstance(t.exception(), DeadlineExceeded)
        and any(rid in b_ for b_ in computed)
    }
    late_rows = sum(batch.count(rid) for batch in computed for rid in late)
    # A caller cancelled during its run is taken back too; one cancelled after its answer was set
    # is not (the two look alike from here): bounds.
    cancelled = {rid for rid, t in tasks if t.cancelled()}
    maybe_rows = sum(batch.count(rid) for batch in computed for rid in cancelled)
    rows_out = sum(len(batch) for batch in computed) - late_rows
    assert rows_out - maybe_rows <= stats.inference_count <= rows_out
    assert stats.execution_count == sum(1 for batch in batches if 13 not in batch)


class BlockingBackend(FakeBackend):
    """A RunsBlocking backend: the batcher runs it inline or in its executor, as its estimator says.
    `hold` (a threading event) makes runs on the executor thread wait for it."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="blocking")
        self.threads: list[str] = []  # the thread of each run, in order
        self.hold: threading.Event | None = None

    @property
    def executor(self) -> ThreadPoolExecutor:
        return self.pool

    def run_blocking(self, inputs: Tensors) -> Tensors:
        name = threading.current_thread().name
        self.threads.append(name)
        x = inputs["x"]
        self.batches.append(x[:, 0].tolist())
        if self.hold is not None and name.startswith("blocking"):
            self.hold.wait(LONG)
        return {"y": x * 2}


LOOP = threading.current_thread().name


async def test_idle_model_runs_a_cheap_request_at_once_with_statistics(make: MakeBatcher) -> None:
    stats = ModelStats()
    be = BlockingBackend()
    b = make(be, stats=stats, inline_max_s=1.0)
    await result(b.submit(x(1), 1))  # its cost is unknown: through the queue and the executor
    assert b.run_now(x(8, rows=2), b.admission(2)) is None  # 2 rows: another bucket, unknown
    out = b.run_now(x(7), b.admission(1))  # synchronous: answered without a task switch
    assert out is not None
    np.testing.assert_array_equal(out["y"], x(7)["x"] * 2)
    assert be.batches == [[1], [7]] and be.threads[0].startswith("blocking") and be.threads[1] == LOOP
    assert (stats.execution_count, stats.inference_count, stats.queue.count) == (2, 2, 2)
    assert b.estimator.cheap(1, 1.0) and not b.estimator.cheap(1, 0.0)


async def test_fast_path_is_skipped_while_work_is_queued_or_running(make: MakeBatcher) -> None:
    be = BlockingBackend()
    b = make(be, inline_max_s=1.0)
    await result(b.submit(x(0), 1))  # 1-row runs are now known to be cheap
    be.hold = threading.Event()
    first = submit(b, 1, rows=4)  # unknown cost: runs on the executor thread, held there
    await turns_until(lambda: b.in_flight_batches == 1 and b.queued_requests == 0)
    assert b.run_now(x(2), b.admission(1)) is None  # a batch is running: queue behind it
    second = submit(b, 2)
    await turns_until(lambda: b.queued_requests == 1)
    be.hold.set()
    await result(first)
    await result(second)
    assert be.batches == [[0], [1, 1, 1, 1], [2]]


async def test_fast_path_checks_like_admission(make: MakeBatcher) -> None:
    be = BlockingBackend()
    b = make(be, priority_levels=2, inline_max_s=1.0)
    await result(b.submit(x(0), 1))
    with pytest.raises(DeadlineExceeded):
        b.run_now(x(1), b.admission(1, deadline=0.0))
    with pytest.raises(TooManyRows):
        b.admission(9)
    # A priority above the model's levels is its default level, as in Triton: served.
    a = b.admission(1, priority=5)
    assert a.priority == 1
    assert b.run_now(x(2), a) is not None
    assert be.batches == [[0], [2]]


async def test_a_request_larger_in_bytes_than_the_cheap_runs_seen_goes_to_the_executor(
    make: MakeBatcher,
) -> None:
    """Rows alone do not say a run's cost where a model's other dimensions vary: a tester's 1-row
    3000x3000 request ran inline after tiny 1-row ones and held the event loop 3.8 s, where no
    watchdog could time it. A run is inline only if a recent cheap run was at least as large."""
    be = BlockingBackend()
    b = make(be, inline_max_s=1.0)
    await result(b.submit(x(1), 1))  # 8 bytes: unknown, so on the executor thread, measured there
    assert b.run_now(x(2), b.admission(1)) is not None  # known cheap at 8 bytes: inline
    wide = {"x": np.full((1, 4096), 3.0, np.float32)}  # 1 row too, 16 KiB
    assert b.run_now(wide, b.admission(1)) is None  # larger than any cheap run seen
    await result(b.submit(wide, 1))  # through the executor, measured there
    assert b.run_now(wide, b.admission(1)) is not None  # now known cheap at its size
    assert [thread == LOOP for thread in be.threads] == [False, True, False, True]


async def test_an_inline_run_past_run_timeout_s_turns_inline_runs_off() -> None:
    """A run's cost may be set by an input's value, not its size (a 16-byte n for an n x n
    product): a tester's n=3500 ran inline for 0.57-0.91 s past run_timeout_s 0.5, round after
    round, where no watchdog could cut it. The first such run turns inline runs off, as a timeout."""

    class ByValue(BlockingBackend):
        def run_blocking(self, inputs: Tensors) -> Tensors:
            if inputs["x"][0, 0] == 9:
                time.sleep(0.5)  # the compute a large value asks for (a stand-in, not a wait)
            return super().run_blocking(inputs)

    # run_timeout_s 0.25 s: the cheap runs stay under it on a loaded machine (at 0.01 s one ran past
    # it in a full run beside a load, session 67, and turned inline runs off early); 0.5 s is past it.
    be = ByValue()
    b = DynamicBatcher(
        [be], BatchingPolicy(max_batch_size=8), ModelStats(), inline_max_s=1.0, run_timeout_s=0.25
    )
    b.start()
    try:
        await result(b.submit(x(1), 1))  # measured on the executor thread
        assert b.run_now(x(2), b.admission(1)) is not None  # cheap: inline
        assert b.run_now(x(9), b.admission(1)) is not None  # inline too, and 500 ms past 250 ms
        assert b.run_now(x(3), b.admission(1)) is None  # inline runs are off
        await result(b.submit(x(3), 1))
        assert [thread == LOOP for thread in be.threads] == [False, True, True, False]
    finally:
        await b.stop(drain=False, timeout_s=0.1)
        shut_down_pools([be])


async def test_fast_path_with_several_instances(make: MakeBatcher) -> None:
    backends = [BlockingBackend(), BlockingBackend()]
    b = make(*backends, inline_max_s=1.0)
    await result(submit(b, 1))
    assert b.run_now(x(2), b.admission(1)) is not None


async def test_fast_path_only_where_the_rules_run_a_lone_request_at_once(make: MakeBatcher) -> None:
    waits = make(BlockingBackend(), max_queue_delay_s=LONG, preferred_batch_sizes=(4,), inline_max_s=1.0)
    waits.estimator.observe(1, 1e-6, time.monotonic(), cpu_s=1e-6, nbytes=1 << 20)
    waits.estimator.observe(4, 1e-6, time.monotonic(), cpu_s=1e-6, nbytes=1 << 20)
    assert waits.run_now(x(1), waits.admission(1)) is None  # Triton's rules wait for a batch of 4
    assert waits.run_now(x(2, rows=4), waits.admission(4)) is not None  # a preferred size: at once
    idle = make(BlockingBackend(), max_queue_delay_s=LONG, idle_dispatch=True, inline_max_s=1.0)
    idle.estimator.observe(1, 1e-6, time.monotonic(), cpu_s=1e-6, nbytes=1 << 20)
    assert idle.run_now(x(3), idle.admission(1)) is not None  # idle dispatch: at once


async def test_a_run_that_ends_after_the_deadline_is_not_answered_as_a_success() -> None:
    now = [100.0]
    gate = asyncio.Event()
    be = FakeBackend(gate)
    b = DynamicBatcher([be], BatchingPolicy(max_batch_size=8), ModelStats(), clock=lambda: now[0])
    b.start()
    try:
        late = submit(b, 1, deadline=100.5)
        in_time = submit(b, 2)  # no deadline: same batch, answered normally
        await asyncio.wait_for(be.started.wait(), LONG)
        now[0] = 101.0  # the run took longer than the deadline allowed
        gate.set()
        with pytest.raises(DeadlineExceeded, match="being computed"):
            await result(late)
        np.testing.assert_array_equal((await result(in_time))["y"], x(2)["x"] * 2)
    finally:
        await b.stop(drain=False, timeout_s=0.1)


async def test_fast_path_run_past_the_deadline_is_not_a_success() -> None:
    now = [100.0]

    class Slow(BlockingBackend):
        def run_blocking(self, inputs: Tensors) -> Tensors:
            now[0] += 1.0  # this run takes a second of the fake clock
            return super().run_blocking(inputs)

    stats = ModelStats()
    be = Slow()
    b = DynamicBatcher([be], BatchingPolicy(max_batch_size=8), stats, clock=lambda: now[0], inline_max_s=1.0)
    b.estimator.observe(1, 1e-6, now[0], cpu_s=1e-6, nbytes=1 << 20)
    b.start()
    try:
        with pytest.raises(DeadlineExceeded, match="being computed"):
            b.run_now(x(1), b.admission(1, deadline=100.5))
        assert be.threads == [LOOP] and stats.execution_count == 1  # it ran, and is counted
    finally:
        await b.stop(drain=False, timeout_s=0.1)


async def test_backlog_is_cut_into_the_batches_formation_forms_not_as_recent_ones() -> None:
    # Runs of 1 and of 4 rows both take 1 s, and recent batches held 1 row each (there was never
    # more queued). Formation runs three queued rows in one 1 s batch, and so does the forecast:
    # it had counted three 1 s batches, as large as recent ones, and shed the request.
    now = [100.0]
    be = FakeBackend()
    b = DynamicBatcher([be], BatchingPolicy(max_batch_size=8), ModelStats(), clock=lambda: now[0])
    b.start()
    try:
        for i in range(12):
            await result(submit(b, i))  # twelve 1-row batches
        for _ in range(16):
            b.estimator.observe(1, 1.0, now[0])
            b.estimator.observe(4, 1.0, now[0])
        be.gate, be.started = asyncio.Event(), asyncio.Event()
        running = submit(b, 100)
        await asyncio.wait_for(be.started.wait(), LONG)  # ends at about 101
        queued = [submit(b, 101), submit(b, 102)]
        await turns_until(lambda: b.queued_requests == 2)
        with pytest.raises(Overloaded):  # 1 s left + one batch of 1 s, and the hops: > 101.9
            await result(b.submit(x(103), 1, deadline=101.9))
        admitted = submit(b, 104, deadline=103.5)  # about 102
        await turns_until(lambda: b.queued_requests == 3)
        be.gate.set()
        for task in (running, *queued, admitted):
            await result(task)
    finally:
        await b.stop(drain=False, timeout_s=0.1)


async def test_requests_that_fail_or_are_cancelled_during_their_run_are_taken_back_out_of_the_counts() -> (
    None
):
    """Triton counts queue, compute and inference_count for successful requests only: a failed
    batch, and a caller that went away during the run, had counted in them."""
    gate = asyncio.Event()
    backend = FakeBackend(gate=gate, fail_on=7.0)
    stats = ModelStats()
    b = DynamicBatcher([backend], BatchingPolicy(max_batch_size=4), stats)
    b.start()
    try:
        ok = submit(b, 1.0, rows=2)
        await turns_until(lambda: backend.running == 1)
        gate.set()
        await result(ok)
        gate.clear()
        failing = submit(b, 7.0)
        await turns_until(lambda: backend.running == 1)
        gate.set()
        with pytest.raises(RuntimeError):
            await result(failing)
        gate.clear()
        gone = submit(b, 3.0, rows=3)
        await turns_until(lambda: backend.running == 1)
        gone.cancel()
        gate.set()
        await turns_until(lambda: backend.running == 0 and b.in_flight_batches == 0)
        assert (stats.queue.count, stats.compute_infer.count, stats.inference_count) == (1, 1, 2)
        assert stats.execution_count == 2  # the runs that completed: the one that failed is not
    finally:
        await b.stop(timeout_s=LONG)


async def test_a_late_request_of_a_model_without_dynamic_batching_is_taken_back_by_its_rows() -> None:
    """Each request runs alone with all its rows (alone_with_rows): 8 rows were counted, 1 taken
    back for a request answered late, and inference_count said 7 with no success."""
    now = [100.0]
    gate = asyncio.Event()
    be = FakeBackend(gate)
    stats = ModelStats()
    policy = BatchingPolicy(max_batch_size=0, alone_with_rows=True)
    b = DynamicBatcher([be], policy, stats, clock=lambda: now[0])
    b.start()
    try:
        late = asyncio.ensure_future(b.submit(x(1, rows=8), 8, deadline=110.0))
        await asyncio.wait_for(be.started.wait(), LONG)
        now[0] = 120.0  # the run ends past its deadline
        gate.set()
        with pytest.raises(DeadlineExceeded):
            await result(late)
        assert (stats.inference_count, stats.queue.count, stats.compute_infer.count) == (0, 0, 0)
        assert stats.execution_count == 1
    finally:
        await b.stop(drain=False, timeout_s=0.1)


async def test_a_caller_gone_between_formation_and_run_is_never_counted_in_queue() -> None:
    """Observed as it left for its batch, cancelled before the run began: never computed, never
    answered, and never in the queue count (it was added there at formation and taken back, so
    the series went down between two scrapes)."""
    be = FakeBackend()
    stats = ModelStats()
    b = DynamicBatcher([be], BatchingPolicy(max_batch_size=8), stats)
    b.start()
    try:
        task = submit(b, 1)
        # The turn in which formation has taken it (histogram observed) and its run has not begun.
        await turns_until(lambda: b.queued_requests == 0 and stats.queue_hist.count == 1)
        assert be.running == 0 and be.batches == [] and stats.queue.count == 0
        task.cancel()
        await turns_until(lambda: b.in_flight_batches == 0)
        assert be.batches == [] and stats.queue.count == 0
    finally:
        await b.stop(drain=False, timeout_s=0.1)


async def test_a_request_expired_between_formation_and_run_is_never_computed() -> None:
    """Its deadline passed after its batch formed and before the run began (the run starts a turn
    later at least, more on a busy loop): 14 of 20 such requests had been computed and answered
    "deadline exceeded while the request was being computed", counted late."""
    now = [100.0]
    be = FakeBackend()
    stats = ModelStats()
    b = DynamicBatcher([be], BatchingPolicy(max_batch_size=8), stats, clock=lambda: now[0])
    b.start()
    try:
        expiring = asyncio.ensure_future(b.submit(x(1), 1, deadline=100.5))
        await turns_until(lambda: b.queued_requests == 0 and stats.queue_hist.count == 1)
        assert be.running == 0 and be.batches == []
        now[0] = 101.0  # past its deadline before its run begins
        with pytest.raises(DeadlineExceeded, match="while waiting in the queue"):
            await result(expiring)
        await turns_until(lambda: b.in_flight_batches == 0)
        assert be.batches == []
        assert (stats.expired, stats.late, stats.execution_count, stats.queue.count) == (1, 0, 0, 0)
        assert (await result(asyncio.ensure_future(b.submit(x(1), 1)))) is not None  # it serves on
    finally:
        await b.stop(drain=False, timeout_s=0.1)


async def test_the_queue_count_never_goes_down_when_a_run_fails() -> None:
    """Triton's queue series counts successes only, and only grows: a run that ended past its
    deadline leaves it where it was before the request left the queue."""
    now = [100.0]
    gate = asyncio.Event()
    be = FakeBackend(gate)
    stats = ModelStats()
    b = DynamicBatcher([be], BatchingPolicy(max_batch_size=8), stats, clock=lambda: now[0])
    b.start()
    try:
        late = asyncio.ensure_future(b.submit(x(1), 1, deadline=110.0))
        await asyncio.wait_for(be.started.wait(), LONG)
        assert stats.queue.count == 0  # running: not answered yet
        now[0] = 120.0
        gate.set()
        with pytest.raises(DeadlineExceeded, match="being computed"):
            await result(late)
        assert (stats.queue.count, stats.queue.ns, stats.late) == (0, 0, 1)
        ok = asyncio.ensure_future(b.submit(x(1), 1))
        assert (await result(ok)) is not None and stats.queue.count == 1
    finally:
        await b.stop(drain=False, timeout_s=0.1)


async def test_a_retired_batchers_running_batch_finishes_and_answers() -> None:
    """A reload under load failed the batch running when the old version's grace ended (4 of 40
    requests, UNAVAILABLE "model stopped before the request was computed", though computing)."""
    gate = asyncio.Event()
    be = FakeBackend(gate)
    b = DynamicBatcher([be], BatchingPolicy(max_batch_size=4), ModelStats())
    b.start()
    running = submit(b, 1)
    await asyncio.wait_for(be.started.wait(), LONG)
    queued = submit(b, 2)
    await turns_until(lambda: b.queued_requests == 1)
    await b.stop(drain=True, timeout_s=0.01, handover=True, finish_runs=True)
    with pytest.raises(NotAccepting):  # what still waited goes to the batcher that replaces it
        await result(queued)
    assert not running.done()
    gate.set()
    assert (await result(running))["y"].tolist() == [[2.0, 2.0]]


async def test_a_deadline_passed_before_the_run_is_a_deadline_even_past_a_queue_timeout() -> None:
    """Its REJECT queue timeout had passed too, before its deadline: the answer named the queue
    policy (UNAVAILABLE) though a batch had taken it in time; its deadline is what stopped it."""
    now = [100.0]
    be = FakeBackend()
    stats = ModelStats()
    policy = BatchingPolicy(max_batch_size=8, default_timeout_s=0.2)  # REJECT is the default action
    b = DynamicBatcher([be], policy, stats, clock=lambda: now[0])
    b.start()
    try:
        expiring = asyncio.ensure_future(b.submit(x(1), 1, deadline=100.5))
        await turns_until(lambda: b.queued_requests == 0 and stats.queue_hist.count == 1)
        now[0] = 101.0  # past its queue timeout (100.2) and its deadline (100.5) before its run
        with pytest.raises(DeadlineExceeded, match="while waiting in the queue") as info:
            await result(expiring)
        assert not isinstance(info.value, QueueTimedOut) and be.batches == []
    finally:
        await b.stop(drain=False, timeout_s=0.1)


class OneRowBlocking(BlockingBackend):
    """Answers one row whatever the request's rows once `broken`: a broken model."""

    def __init__(self, broken: bool = True) -> None:
        super().__init__()
        self.broken = broken

    def run_blocking(self, inputs: Tensors) -> Tensors:
        out = super().run_blocking(inputs)
        return {"y": out["y"][:1]} if self.broken else out


async def test_a_request_run_alone_with_outputs_of_other_rows_fails_as_a_batch_does(
    make: MakeBatcher,
) -> None:
    """Outputs not split (no dynamic batching, or the fast path) were passed through whole: a
    model answering 1 row for a request of 3 was answered OK (a README tester); split by scatter the
    same outputs fail the run. Now both fail, with scatter's words."""
    alone = make(OneRowBlocking(), max_batch_size=0, alone_with_rows=True)
    with pytest.raises(ValueError, match=r"'y' with shape \(1, 2\) for a batch of 3 rows"):
        await result(alone.submit(x(1, rows=3), 1))
    be = OneRowBlocking(broken=False)
    fast = make(be, inline_max_s=1.0)
    await result(fast.submit(x(0, rows=2), 2))  # 2-row runs are now known to be cheap
    be.broken = True
    with pytest.raises(ValueError, match=r"'y' with shape \(1, 2\) for a batch of 2 rows"):
        fast.run_now(x(5, rows=2), fast.admission(2))  # on the loop thread, at once
    assert be.threads[-1] == LOOP  # it was the fast path that ran it


class Refused(InputsRefused):
    """A backend's refusal of a run for its inputs' values."""


class RefusingBackend(FakeBackend):
    """Refuses (InputsRefused) any run holding the id `refuse`; other ids as FakeBackend."""

    def __init__(self, gate: asyncio.Event, refuse: float) -> None:
        super().__init__(gate)
        self.refuse = refuse

    async def run(self, inputs: Tensors) -> Tensors:
        out = await super().run(inputs)
        if self.refuse in inputs["x"]:
            raise Refused(f"{self.refuse} refused")
        return out


async def test_a_batch_refused_for_its_inputs_runs_its_halves_again(make: MakeBatcher) -> None:
    """Only the request at fault gets the refusal; before, all five did. Halves, not each request
    alone: the half without the culprit is one run."""
    stats = ModelStats()
    gate = asyncio.Event()
    be = RefusingBackend(gate, refuse=4)
    b = make(be, stats=stats)
    first = submit(b, 1)
    await asyncio.wait_for(be.started.wait(), LONG)
    rest = [submit(b, rid) for rid in (2, 3, 4, 5)]
    await turns_until(lambda: b.queued_requests == 4)
    gate.set()
    assert (await result(first))["y"].tolist() == [[2, 2]]
    with pytest.raises(Refused, match="4 refused"):
        await result(rest[2])
    for rid, task in zip((2, 3, 5), (rest[0], rest[1], rest[3]), strict=True):
        assert ((await result(task))["y"] == 2 * rid).all()
    assert be.batches == [[1], [2, 3, 4, 5], [2, 3], [4, 5], [4], [5]]
    assert stats.execution_count == 3 and stats.inference_count == 4  # the answered runs only
    assert b.in_flight_batches == 0


async def test_a_refused_request_alone_is_not_run_again(make: MakeBatcher) -> None:
    gate = asyncio.Event()
    gate.set()
    be = RefusingBackend(gate, refuse=4)
    b = make(be)
    with pytest.raises(Refused):
        await result(submit(b, 4))
    assert be.batches == [[4]]


async def test_a_refused_batch_is_halved_not_run_request_by_request(make: MakeBatcher) -> None:
    """One culprit among eight: its batch's halves, halved again while refused, take 6 more runs
    where each request alone took 8; a client putting one bad request in every batch multiplies
    the runs by about 2*log2(n), not n."""
    gate = asyncio.Event()
    be = RefusingBackend(gate, refuse=6)
    b = make(be)
    first = submit(b, 1)
    await asyncio.wait_for(be.started.wait(), LONG)
    rest = {rid: submit(b, rid) for rid in range(2, 10)}
    await turns_until(lambda: b.queued_requests == 8)
    gate.set()
    await result(first)
    with pytest.raises(Refused):
        await result(rest.pop(6))
    for rid, task in rest.items():
        assert ((await result(task))["y"] == 2 * rid).all()
    assert be.batches == [[1], [2, 3, 4, 5, 6, 7, 8, 9], [2, 3, 4, 5], [6, 7, 8, 9], [6, 7], [6], [7], [8, 9]]


async def test_a_request_expired_while_its_batch_was_refused_is_not_run_again() -> None:
    """The mission's rule holds in the runs again: what is past its deadline is answered
    DEADLINE_EXCEEDED, not computed."""
    now = [100.0]

    class SlowRefusal(RefusingBackend):
        async def run(self, inputs: Tensors) -> Tensors:
            try:
                return await super().run(inputs)
            except Refused:
                now[0] = 131.0  # the refused run outlasted request 2's deadline
                raise

    gate = asyncio.Event()
    be = SlowRefusal(gate, refuse=3)
    stats = ModelStats()
    b = DynamicBatcher([be], BatchingPolicy(max_batch_size=8), stats, clock=lambda: now[0])
    b.start()
    try:
        first = submit(b, 1)
        await asyncio.wait_for(be.started.wait(), LONG)
        # 30 s ahead: the queue's expiry timer runs on real time, and a 0.5 s deadline had expired
        # request 2 in the queue when the machine was busy (a full run failed; alone it passed).
        doomed, culprit, good = submit(b, 2, deadline=130.0), submit(b, 3), submit(b, 4)
        await turns_until(lambda: b.queued_requests == 3)
        gate.set()
        await result(first)
        with pytest.raises(DeadlineExceeded, match="while its batch was run again"):
            await result(doomed)
        with pytest.raises(Refused):
            await result(culprit)
        assert ((await result(good))["y"] == 8).all()
        assert be.batches == [[1], [2, 3, 4], [3, 4], [3], [4]]
        assert stats.expired == 1
    finally:
        await b.stop(drain=False, timeout_s=0.1)
