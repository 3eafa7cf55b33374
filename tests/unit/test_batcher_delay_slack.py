"""A batch waiting out max_queue_delay is woken early enough to be answered before its deadline.

Formation woke a lone request at its deadline less the predicted run of a full batch (~50 us for
the MLP), with nothing left for the dispatcher waking late, the hop to the run and back, or a gRPC
deadline its caller holds earlier than the server does: 3 of 3 lone requests (delay 3 s, 1 s
deadline) failed at their deadline on an idle server. The batcher-level tests run on a loop whose
time the test controls (a timer fires as late as the test says; a run costs what the test says),
so no outcome depends on the machine's load; one runs on uvloop, for its timers' range.
"""

from __future__ import annotations

import asyncio
import selectors
import time
from collections.abc import Coroutine
from typing import Any, TypeVar
from unittest import mock

import numpy as np
import pytest
import uvloop

from batcher import BatchingPolicy, DynamicBatcher, ModelStats, Tensors, fast_path, run_batch
from batcher.form import Pending, WakeMargin, form_batch

ROW = {"x": np.zeros((1, 2), np.float32)}
LONG = 5.0  # an upper bound no healthy run comes near
HUGE_DELAY_S = (2**64 - 1) / 1e6  # max_queue_delay_microseconds: 2^64-1, as config.py converts it
T = TypeVar("T")


def req(seq: int, rows: int = 1, *, arrival: float = 0.0, hard: float | None = None) -> Pending[str]:
    return Pending(
        inputs={"x": np.zeros((rows, 2), np.float32)},
        rows=rows,
        priority=1,
        arrival=arrival,
        seq=seq,
        handle=f"r{seq}",
        hard=hard,
    )


# --- formation: pure, plain numbers ----------------------------------------------------------------


def test_wake_leaves_the_margin_before_the_deadline() -> None:
    policy = BatchingPolicy(max_batch_size=8, max_queue_delay_s=3.0)
    margin = WakeMargin(fixed_s=0.005, share=0.01)
    f = form_batch([req(0, hard=1.0)], 0.0, policy, lambda rows: 0.002 if rows == 8 else 0.0, margin=margin)
    # 1.0 - 2 ms (a run of 8, the next target) - 5 ms - 1% of the 1 s budget.
    assert f.batch == [] and f.wait_until == pytest.approx(1.0 - 0.002 - 0.005 - 0.010)
    # Woken a little late, well within the margin: it runs, it is not expired.
    late = form_batch([req(0, hard=1.0)], f.wait_until + 0.004, policy, lambda rows: 0.002, margin=margin)
    assert [p.handle for p in late.batch] == ["r0"] and late.expired == [] and late.reason == "deadline"


def test_wake_leaves_time_for_the_batch_itself_when_it_is_predicted_longer() -> None:
    # One noisy bucket: a run of 1 row predicted longer than a run of the next target, 8 rows.
    seconds = {1: 0.050, 8: 0.002}
    policy = BatchingPolicy(max_batch_size=8, max_queue_delay_s=3.0)
    f = form_batch([req(0, hard=1.0)], 0.0, policy, lambda rows: seconds.get(rows, 0.0))
    assert f.wait_until == pytest.approx(1.0 - 0.050)  # was 1.0 - 0.002: too late to run it at all


def test_the_request_with_the_least_margin_sets_the_wake() -> None:
    # r0's deadline is later but its budget longer: 1% of 10 s is 100 ms, more than r1's 20 ms less.
    policy = BatchingPolicy(max_batch_size=8, max_queue_delay_s=30.0)
    q = [req(0, hard=10.0), req(1, arrival=9.0, hard=9.98)]
    f = form_batch(q, 9.0, policy, lambda rows: 0.0, margin=WakeMargin(share=0.01))
    assert f.batch == [] and f.wait_until == pytest.approx(10.0 - 0.1)


def test_a_huge_delay_waits_for_the_deadline_or_for_ever() -> None:
    policy = BatchingPolicy(max_batch_size=8, max_queue_delay_s=HUGE_DELAY_S)
    margin = WakeMargin(fixed_s=0.005)
    with_deadline = form_batch(
        [req(0, arrival=100.0, hard=102.0)], 100.0, policy, lambda rows: 0.0, margin=margin
    )
    assert with_deadline.wait_until == pytest.approx(102.0 - 0.005)
    without = form_batch([req(0, arrival=100.0)], 100.0, policy, lambda rows: 0.0, margin=margin)
    assert without.wait_until == 100.0 + HUGE_DELAY_S  # finite: the delay, as configured
    full = form_batch([req(0, arrival=100.0), req(1, 7)], 101.0, policy, lambda rows: 0.0, margin=margin)
    assert [p.handle for p in full.batch] == ["r0", "r1"] and full.reason == "full"


# --- the batcher, on a loop whose time the test controls ---------------------------------------------


class VirtualTime:
    """The loop's and the batcher's clock: it stands still while anything is ready to run, and
    jumps to the next timer when the loop would sleep, arriving `late_s` after it (a loop that
    wakes late: uvloop rounding timers to milliseconds, other work on the loop)."""

    def __init__(self, late_s: float = 0.0) -> None:
        self.now = 1000.0
        self.late_s = late_s

    def __call__(self) -> float:
        return self.now


class _JumpingSelector(selectors.DefaultSelector):
    def __init__(self, clock: VirtualTime) -> None:
        super().__init__()
        self._clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:  # nothing scheduled: only I/O (never here) could wake the loop
            raise AssertionError("the loop would sleep for ever")
        self._clock.now += timeout + self._clock.late_s
        return ready


class VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self, clock: VirtualTime) -> None:
        super().__init__(_JumpingSelector(clock))
        self._virtual = clock

    def time(self) -> float:
        return self._virtual()


class _VirtualPerf:
    """The `time` of the batcher's run timing (run_batch.py, fast_path.py) whose perf_counter_ns
    reads the virtual clock: a run is timed as long as it moved the clock (CostedBackend), not as
    long as this machine took (preempted 0.3 s in a run, the estimator had learnt a 300 ms run and
    the next request, with 300 ms, was refused)."""

    def __init__(self, clock: VirtualTime) -> None:
        self._clock = clock

    def perf_counter_ns(self) -> int:
        return round(self._clock() * 1e9)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def run_virtual(clock: VirtualTime, main: Coroutine[Any, Any, T]) -> T:
    loop = VirtualLoop(clock)
    timing = _VirtualPerf(clock)
    try:
        with mock.patch.object(run_batch, "time", timing), mock.patch.object(fast_path, "time", timing):
            return loop.run_until_complete(main)
    finally:
        loop.close()


class CostedBackend:
    """Answers y = 2x at once, moving the clock on by `run_s`: a run as slow as the test says."""

    def __init__(self, clock: VirtualTime, run_s: float) -> None:
        self.clock = clock
        self.run_s = run_s
        self.runs: list[int] = []

    async def run(self, inputs: Tensors) -> Tensors:
        self.runs.append(len(inputs["x"]))
        self.clock.now += self.run_s
        return {"y": inputs["x"] * 2}


def warmed(
    clock: VirtualTime, backend: CostedBackend, policy: BatchingPolicy, stats: ModelStats
) -> DynamicBatcher:
    """A started batcher whose estimator has seen ten 8-row runs of 2 ms (the tester's warm-up)."""
    b = DynamicBatcher([backend], policy, stats, clock)
    for _ in range(10):
        b.estimator.observe(8, 0.002, clock())
    b.start()
    return b


def test_a_lone_request_waiting_out_the_delay_is_answered_before_its_deadline() -> None:
    # Runs of 8 rows predict 2 ms; the lone request's run costs 2.5 ms (the hop to the run and back,
    # none of it predicted) and the loop wakes 2 ms late. Woken at its deadline less 2 ms, as
    # before, each was failed at its deadline.
    clock = VirtualTime(late_s=0.002)
    backend = CostedBackend(clock, 0.0025)
    stats = ModelStats()
    policy = BatchingPolicy(max_batch_size=8, max_queue_delay_s=3.0)

    async def main() -> list[str]:
        b = warmed(clock, backend, policy, stats)
        outcomes: list[str] = []
        try:
            for _ in range(3):
                hard = clock() + 0.3
                try:
                    out = await b.submit(ROW, 1, deadline=hard)
                    outcomes.append("ok" if out["y"].shape == (1, 2) and clock() <= hard else "wrong")
                except Exception as exc:  # the outcome is the finding: which error, if any
                    outcomes.append(f"{type(exc).__name__}: {exc}")
        finally:
            await b.stop()
        return outcomes

    assert run_virtual(clock, main()) == ["ok"] * 3
    assert backend.runs == [1, 1, 1]
    assert stats.late == 0 and stats.expired == 0 and stats.dispatch["deadline"] == 3


def test_without_a_deadline_a_lone_request_still_runs_when_its_delay_has_passed() -> None:
    clock = VirtualTime()
    backend = CostedBackend(clock, 0.0)
    stats = ModelStats()
    policy = BatchingPolicy(max_batch_size=8, max_queue_delay_s=0.02)

    async def main() -> float:
        b = warmed(clock, backend, policy, stats)
        try:
            start = clock()
            out = await b.submit(ROW, 1)
            assert out["y"].shape == (1, 2)
            return clock() - start
        finally:
            await b.stop()

    assert run_virtual(clock, main()) == pytest.approx(0.02)  # the margin is for deadlines only
    assert stats.dispatch["delay_expired"] == 1


def test_a_huge_delay_waits_for_a_deadline_not_the_delay() -> None:
    clock = VirtualTime(late_s=0.001)
    backend = CostedBackend(clock, 0.0)
    policy = BatchingPolicy(max_batch_size=4, max_queue_delay_s=HUGE_DELAY_S)

    async def main() -> float:
        b = warmed(clock, backend, policy, ModelStats())
        try:
            hard = clock() + 2.0
            out = await b.submit(ROW, 1, deadline=hard)
            assert out["y"].shape == (1, 2)
            return hard - clock()
        finally:
            await b.stop()

    left = run_virtual(clock, main())
    assert 0 < left <= 0.005 + 0.02  # answered in time, woken for its deadline (margin: 5 ms + 1%)


def test_a_huge_delay_does_not_overflow_uvloops_timers() -> None:
    # On the server's loop: a lone request with no deadline waits (the delay is ~584,542 years),
    # and runs once a second request fills the batch.
    policy = BatchingPolicy(max_batch_size=4, max_queue_delay_s=HUGE_DELAY_S)

    async def main() -> list[int]:
        backend = CostedBackend(VirtualTime(), 0.0)  # its clock is not the batcher's here
        b = DynamicBatcher([backend], policy, ModelStats())
        b.start()
        try:
            lone = asyncio.ensure_future(b.submit(ROW, 1))
            while b.queued_requests == 0:
                await asyncio.sleep(0)  # a loop turn: let it be queued and its wait begin
            for _ in range(3):
                await asyncio.sleep(0)
            fill = b.submit({"x": np.zeros((3, 2), np.float32)}, 3)  # 4 rows: max_batch_size
            outs = await asyncio.wait_for(asyncio.gather(lone, fill), LONG)
            assert [o["y"].shape for o in outs] == [(1, 2), (3, 2)]
        finally:
            await b.stop()
        return backend.runs

    assert uvloop.run(main()) == [4]
