"""DynamicBatcher's bookkeeping, pinned where mutation testing (scripts/mutation.sh) found it
untested: what each run records (rows, slack, CPU, the estimator's observation, the dispatch
reason), refusals and expiries as counted, traced runs, the inline rule for queued runs, and the
stop that waits on a request whose caller leaves.

Helpers and the `make` fixture are test_mutants_dynamic.py's. The estimator's `observe` is wrapped
per test to see exactly what each run reported to it; `_trip` is called directly (the watchdog
path to it is tested in test_batcher_watchdog.py).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
from typing import Any

import pytest

from batcher import BatchingPolicy, DeadlineExceeded, DynamicBatcher, ModelStats, QueueFull
from batcher.types import LevelQueuePolicy, QueueTrace
from tests.unit.test_mutants_dynamic import (
    LONG,
    LOOP,
    Blocking,
    Clock,
    Gated,
    Make,
    make,
    result,
    submit,
    turns_until,
    x,
)

__all__ = ["make"]  # the fixture, imported for pytest


Seen = list[tuple[int, float, float, float | None]]


def observed(b: DynamicBatcher) -> Seen:
    """Every (rows, seconds, now, cpu_s) the batcher reports to its estimator from now on."""
    seen: Seen = []
    estimator = b.estimator
    real = estimator.observe

    def observe(
        rows: int, seconds: float, now: float, cpu_s: float | None = None, nbytes: int = 0, cold: bool = False
    ) -> None:
        seen.append((rows, seconds, now, cpu_s))
        real(rows, seconds, now, cpu_s, nbytes, cold)

    estimator.observe = observe  # type: ignore[method-assign]
    return seen


def cheap(b: DynamicBatcher, now: float, *rows: int, seconds: float = 0.0) -> None:
    """Runs of these sizes are known, costing no CPU: the fast path and inline runs take them."""
    for r in rows:
        b.estimator.observe(r, seconds, now, cpu_s=0.0, nbytes=1 << 20)


# -- the fast path ---------------------------------------------------------------------------------


async def test_fast_runs_record_rows_reason_slack_cpu_and_their_observation(make: Make) -> None:
    clock, stats, be = Clock(), ModelStats(), Blocking()
    b = make(be, clock=clock, stats=stats, inline_max_s=1.0)
    cheap(b, clock.now, 1, 2, 8)
    seen = observed(b)
    await b.submit(x(1), 1, deadline=102.0)
    await b.submit(x(2, rows=2), 2)
    await b.submit(x(3, rows=8), 8)
    assert be.threads == [LOOP] * 3  # all three on the fast path
    # Each run's own rows (a lone request of 2 or 8 rows is not counted as one).
    assert sorted(stats.batch_stats) == [1, 2, 8] and stats.inference_count == 11
    # The reason per size: 1 row waits for nothing on an idle model, 8 fill the batch.
    assert (stats.dispatch["idle"], stats.dispatch["full"]) == (2, 1)
    # Slack is the time left before the deadline when the run began, in nanoseconds; only the
    # first request had one. Queue time: none.
    assert (stats.slack_hist.count, stats.slack_hist.total) == (1, 2_000_000_000)
    assert (stats.queue_hist.count, stats.queue_hist.total) == (3, 0)
    # The estimator saw each run's wall time in seconds (inline: its CPU time too), at `now`.
    ns = [stats.batch_stats[r].compute_infer.ns for r in (1, 2, 8)]
    assert seen == [(r, n / 1e9, clock.now, n / 1e9) for r, n in zip((1, 2, 8), ns, strict=True)]
    assert stats.run_cpu_s == ns[0] / 1e9 + ns[1] / 1e9 + ns[2] / 1e9
    # The CPU average of 1-row runs moved from 0 by a fifth of this run's cost, not less.
    assert not b.estimator.cheap(1, math.nextafter(0.2 * (ns[0] / 1e9), 0.0))


async def test_a_fast_run_of_a_model_without_batch_dimension_counts_its_inputs_rows(make: Make) -> None:
    clock, stats, be = Clock(), ModelStats(), Blocking()
    b = make(be, clock=clock, stats=stats, inline_max_s=1.0, max_batch_size=0, alone_with_rows=True)
    cheap(b, clock.now, 1)
    out = await b.submit(x(4, rows=3), 1)
    assert out["y"].shape == (3, 2) and be.threads == [LOOP]
    assert sorted(stats.batch_stats) == [3] and stats.inference_count == 3
    assert stats.dispatch["full"] == 1


async def test_a_fast_path_refusal_is_counted_as_shed_for_its_deadline(make: Make) -> None:
    clock, stats, be = Clock(), ModelStats(), Blocking()
    b = make(be, clock=clock, stats=stats, inline_max_s=1.0)
    cheap(b, clock.now, 1, seconds=5.0)  # cheap in CPU, but a run takes 5 s
    with pytest.raises(DeadlineExceeded, match=r"^deadline cannot be met"):
        await b.submit(x(1), 1, deadline=101.0)
    assert be.batches == []
    assert stats.rejections["deadline"] == 1 and stats.shed == 1


class Slow(Blocking):
    """A fast-path backend whose every run ends 10 s later on the fake clock."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock

    def run_blocking(self, inputs: Any) -> Any:
        self.clock.now += 10.0
        return super().run_blocking(inputs)


async def test_each_fast_run_that_ends_late_is_counted(make: Make) -> None:
    clock, stats = Clock(), ModelStats()
    be = Slow(clock)
    b = make(be, clock=clock, stats=stats, inline_max_s=1.0)
    for rid in (1, 2):
        cheap(b, clock.now, 1)
        with pytest.raises(
            DeadlineExceeded, match=r"^deadline exceeded while the request was being computed$"
        ):
            await b.submit(x(rid), 1, deadline=clock.now + 1.0)
    assert be.threads == [LOOP, LOOP] and stats.late == 2


async def test_after_a_trip_nothing_runs_inline_even_if_cheap(make: Make) -> None:
    clock, be = Clock(), Blocking()
    b = make(be, clock=clock, inline_max_s=1.0)
    cheap(b, clock.now, 1)
    b._trip()  # a run outlived the watchdog
    out = await b.submit(x(5), 1)
    assert (out["y"] == 10).all() and be.threads == ["blocking_0"]


# -- runs through the queue ------------------------------------------------------------------------


async def test_queued_runs_record_reason_slack_cpu_and_their_observation(make: Make) -> None:
    clock, stats, gate = Clock(), ModelStats(), asyncio.Event()
    be = Gated(gate)
    b = make(be, clock=clock, stats=stats)
    seen = observed(b)
    first = submit(b, 1)  # an idle model: dispatched at once
    await asyncio.wait_for(be.started.wait(), LONG)
    full = submit(b, 2, rows=8, deadline=103.0)  # waits for the instance; then fills a batch
    await turns_until(lambda: b.queued_requests == 1)
    gate.set()
    await result(first)
    await result(full)
    assert (stats.dispatch["idle"], stats.dispatch["full"]) == (1, 1)
    assert (stats.slack_hist.count, stats.slack_hist.total) == (1, 3_000_000_000)
    ns = [stats.batch_stats[r].compute_infer.ns for r in (1, 8)]
    assert seen == [(1, ns[0] / 1e9, clock.now, None), (8, ns[1] / 1e9, clock.now, None)]
    assert stats.run_cpu_s == 0.0  # an async backend's runs cost the loop nothing measured


async def test_executor_runs_add_up_their_cpu(make: Make) -> None:
    stats, be = ModelStats(), Blocking()
    b = make(be, stats=stats)  # no inline runs: every run in the executor
    seen = observed(b)
    await b.submit(x(1), 1)
    await b.submit(x(2), 1)
    assert be.threads == ["blocking_0"] * 2
    cpu = [s[3] for s in seen]
    assert all(c is not None and c >= 0.0 for c in cpu)
    assert stats.run_cpu_s == (cpu[0] or 0.0) + (cpu[1] or 0.0)


async def test_a_queued_run_goes_inline_only_when_inline_runs_are_on(make: Make) -> None:
    clock = Clock()
    off, on = Blocking(), Blocking()
    b_off = make(off, clock=clock, inline_max_s=0.0)
    b_on = make(on, clock=clock, inline_max_s=0.5)
    for b in (b_off, b_on):
        cheap(b, clock.now, 1)
        await b.enqueue(x(1), b.admission(1))  # through the queue (the fast path is not asked)
    assert off.threads == ["blocking_0"] and on.threads == [LOOP]


async def test_a_traced_request_gets_its_runs_record(make: Make) -> None:
    b = make(Gated())
    trace = QueueTrace()
    out = await asyncio.wait_for(b.enqueue(x(6, rows=3), b.admission(3), trace), LONG)
    assert (out["y"] == 12).all()
    run = trace.run
    assert run is not None and (run.rows, run.requests, run.traced) == (3, 1, [trace])
    assert run.gather_ns <= run.run_ns <= run.scatter_ns <= run.end_ns


async def test_expiries_in_formation_and_on_the_timer_are_all_counted(make: Make) -> None:
    clock, stats = Clock(), ModelStats()
    be = Gated(asyncio.Event())
    b = make(be, clock=clock, stats=stats)

    async def expire_in_formation(rid: float) -> None:
        be.gate = asyncio.Event()
        running = submit(b, rid)
        await turns_until(lambda: b.in_flight_batches == 1)
        doomed = submit(b, rid + 0.5, deadline=clock.now + 10.0)
        await turns_until(lambda: b.queued_requests == 1)
        clock.now += 20.0  # past its deadline when the instance is next free
        be.gate.set()
        await result(running)
        with pytest.raises(DeadlineExceeded, match=r"waiting in the queue$"):
            await result(doomed)
        for _ in range(16):  # the gated run's wall time (however long the test held it) replaced
            b.estimator.observe(1, 0.010, clock.now)

    await expire_in_formation(1)
    assert stats.expired == 1
    be.gate = asyncio.Event()
    running = submit(b, 2)
    await turns_until(lambda: b.in_flight_batches == 1)
    with pytest.raises(DeadlineExceeded, match=r"waiting in the queue$"):
        # Its timer fires while queued, ~1 s on. The forecast reads 10 ms runs (above): a gated
        # run's wall time had been learnt, and a stall of 0.5 s shed it ("about 1212.1 ms until an
        # answer ..., 1000.0 ms left"; at 10 ms deadlines a smaller one had).
        await result(submit(b, 2.5, deadline=clock.now + 1.0))
    assert stats.expired == 2
    be.gate.set()
    await result(running)
    await expire_in_formation(3)
    assert stats.expired == 3


async def test_a_full_queue_refusal_is_counted_as_such(make: Make) -> None:
    stats, gate = ModelStats(), asyncio.Event()
    be = Gated(gate)
    b = make(be, stats=stats, max_queue_size=1)
    running = submit(b, 1)
    await asyncio.wait_for(be.started.wait(), LONG)
    queued = submit(b, 2)
    await turns_until(lambda: b.queued_requests == 1)
    with pytest.raises(QueueFull):
        await result(submit(b, 3))
    assert stats.rejections["queue_full"] == 1 and stats.rejections["queued_bytes"] == 0
    gate.set()
    await result(running)
    await result(queued)


async def test_a_full_level_queue_refusal_is_counted_as_a_full_queue(make: Make) -> None:
    # Level 1 has a queue of its own, of one request; the shared bound is far from reached.
    stats, gate = ModelStats(), asyncio.Event()
    be = Gated(gate)
    own = ((1, LevelQueuePolicy(max_queue_size=1)),)
    b = make(be, stats=stats, priority_levels=2, default_priority=2, level_policies=own)
    running = submit(b, 1, priority=1)
    await asyncio.wait_for(be.started.wait(), LONG)
    queued = submit(b, 2, priority=1)
    await turns_until(lambda: b.queued_requests == 1)
    with pytest.raises(QueueFull):
        await result(submit(b, 3, priority=1))
    assert stats.rejections["queue_full"] == 1 and stats.rejections["queued_bytes"] == 0
    gate.set()
    await result(running)
    await result(queued)


async def test_no_fast_run_while_requests_wait_for_company(make: Make) -> None:
    # A lone row waits for its batch to grow; a full-size request then arrives. It joins the queue
    # (and the row goes first, in arrival order) rather than running ahead on the fast path.
    clock, be = Clock(), Blocking()
    b = make(be, clock=clock, inline_max_s=1.0, max_queue_delay_s=1.0)
    cheap(b, clock.now, 1, 8)
    lone = submit(b, 1)
    await turns_until(lambda: b.queued_requests == 1)
    full = submit(b, 2, rows=8)
    await result(lone)
    await result(full)
    assert be.batches == [[1.0], [2.0] * 8]


async def test_a_request_cancelled_before_its_first_formation_is_never_dispatched(make: Make) -> None:
    stats, be = ModelStats(), Gated()
    b = make(be, stats=stats)  # no delay: a lone request is dispatched by the first formation
    doomed = submit(b, 1)
    await turns_until(lambda: b.queued_requests == 1)  # admitted; the dispatcher woken, not yet run
    doomed.cancel()  # its future is cancelled now; its task removes it only when it next runs
    await turns_until(lambda: b.queued_requests == 0)
    assert (stats.queue.count, sum(stats.dispatch.values()), be.batches) == (0, 0, [])
    assert b.accepting and ((await result(submit(b, 2)))["y"] == 4).all()


# -- stop, names, defaults -------------------------------------------------------------------------


async def test_a_drain_ends_when_the_last_queued_caller_leaves(make: Make) -> None:
    b = make(Gated(), clock=Clock(), max_queue_delay_s=1.0)  # a lone request waits for company
    waiting = submit(b, 1)
    await turns_until(lambda: b.queued_requests == 1)
    for _ in range(20):  # loop turns (no time passes): the dispatcher forms, and waits for company
        await asyncio.sleep(0)
    stopping = asyncio.ensure_future(b.stop(drain=True, timeout_s=LONG))
    # Its caller leaves after stop() looked at the queue and before the dispatcher runs again:
    # only the removal itself can tell stop() the queue is empty.
    waiting.cancel()
    await asyncio.wait_for(stopping, LONG / 2)  # not after stop's own timeout
    assert waiting.cancelled()


async def test_the_watchdog_names_the_batcher_by_default(caplog: pytest.LogCaptureFixture) -> None:
    b = DynamicBatcher(
        [Gated(asyncio.Event())], BatchingPolicy(max_batch_size=8), ModelStats(), run_timeout_s=0.05
    )
    b.start()
    try:
        with (
            caplog.at_level(logging.ERROR, logger="batcher.watchdog"),
            pytest.raises(Exception, match="run_timeout"),
        ):
            await asyncio.wait_for(b.submit(x(1), 1), LONG)
        assert any(r.getMessage().startswith("batcher: instance 0 ran a batch") for r in caplog.records)
    finally:
        await b.stop(drain=False, timeout_s=0.1)


def test_stop_gives_a_drain_five_seconds_by_default() -> None:
    assert inspect.signature(DynamicBatcher.stop).parameters["timeout_s"].default == 5.0
