"""The wake margin follows how late the loop has lately run the batcher's timers.

A fixed 5 ms (plus 1% of the budget) did not cover a stalled process: 3 of 30 lone 200 ms requests
failed at load average 7. The batcher now records how late its timers ran (batcher/lateness.py)
and adds a decayed maximum of that, at most 50 ms, to the margin. The batcher-level test runs on a
loop whose time the test controls (tests/unit/test_batcher_delay_slack.py): every timer fires
20 ms late, so no outcome depends on the machine's load.
"""

from __future__ import annotations

import numpy as np
import pytest

from batcher import BatchingPolicy, ModelStats
from batcher.form import Pending, WakeMargin, form_batch
from batcher.lateness import LoopLateness
from tests.unit.test_batcher_delay_slack import CostedBackend, VirtualTime, run_virtual, warmed

ROW = {"x": np.zeros((1, 2), np.float32)}


def test_the_largest_recent_lateness_counts_and_fades() -> None:
    late = LoopLateness(half_life_s=10.0, cap_s=0.050)
    assert late.current(0.0) == 0.0
    late.observe(0.020, 1.0)
    late.observe(0.004, 1.0)  # smaller: the 20 ms stands
    assert late.current(1.0) == pytest.approx(0.020)
    assert late.current(11.0) == pytest.approx(0.010)  # one half-life on
    late.observe(-0.001, 11.0)  # a timer that fired early (uvloop's): nothing
    assert late.current(11.0) == pytest.approx(0.010)
    late.observe(0.015, 11.0)  # larger than what is left of the old one
    assert late.current(11.0) == pytest.approx(0.015)


def test_a_stall_of_seconds_counts_as_the_cap() -> None:
    late = LoopLateness(cap_s=0.050)
    late.observe(3.0, 0.0)
    assert late.current(0.0) == pytest.approx(0.050)
    with pytest.raises(ValueError, match="half_life_s"):
        LoopLateness(half_life_s=0.0)


def test_the_lateness_moves_a_waiting_batchs_wake_earlier() -> None:
    policy = BatchingPolicy(max_batch_size=8, max_queue_delay_s=3.0)
    lone = [Pending(inputs=ROW, rows=1, priority=1, arrival=0.0, seq=0, handle="r0", hard=1.0)]
    margin = WakeMargin(fixed_s=0.005, share=0.01)
    assert margin.plus(0.0) is margin
    f = form_batch(lone, 0.0, policy, lambda rows: 0.002, margin=margin.plus(0.020))
    assert f.wait_until == pytest.approx(1.0 - 0.002 - 0.005 - 0.020 - 0.010)


def test_a_loop_that_ran_timers_late_wakes_the_next_batch_in_time() -> None:
    # Every timer fires 20 ms late. A first request, without a deadline, waits out the 3 s delay:
    # its wake-up shows the lateness. The next one, with a 300 ms deadline, is then woken 20 ms
    # sooner and answered in time; with the fixed 5 ms margin it woke after its deadline.
    clock = VirtualTime(late_s=0.020)
    backend = CostedBackend(clock, 0.0025)
    stats = ModelStats()
    policy = BatchingPolicy(max_batch_size=8, max_queue_delay_s=3.0)

    async def main() -> list[str]:
        b = warmed(clock, backend, policy, stats)
        outcomes: list[str] = []
        try:
            for deadline_s in (None, 0.3, 0.3):
                hard = None if deadline_s is None else clock() + deadline_s
                try:
                    out = await b.submit(ROW, 1, deadline=hard)
                    in_time = hard is None or clock() <= hard
                    outcomes.append("ok" if out["y"].shape == (1, 2) and in_time else "late")
                except Exception as exc:  # the outcome is the finding: which error, if any
                    outcomes.append(f"{type(exc).__name__}: {exc}")
        finally:
            await b.stop()
        return outcomes

    assert run_virtual(clock, main()) == ["ok"] * 3
    assert backend.runs == [1, 1, 1]
    assert stats.expired == 0 and stats.late == 0
    assert stats.dispatch["delay_expired"] == 1 and stats.dispatch["deadline"] == 2
