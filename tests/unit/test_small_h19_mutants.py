"""The two mutants tests/MUTANTS.md listed as missing tests in batcher/dynamic.py.

- `stop__mutmut_2` (`timeout_s=6.0`): the 5 s default was pinned by the signature alone, which
  mutmut does not run for a mutant of `stop` (it runs the tests that call it), and a call that waits
  out the default on real time takes 5 s. Here it runs on a loop whose time jumps to its next timer
  (tests/unit/test_batcher_delay_slack.py): the wait is read on that clock, in no time.
- `__init____mutmut_56` (the queue built without `on_late=self._lateness.observe`): how late a
  queued request's expiry timer ran no longer widened formation's wake margin. Here the loop stalls
  while a request's 10 ms timer is due, and the next lone request, whose deadline leaves less than
  that lateness beyond the fixed margin, is run at once instead of waiting to grow past it.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from batcher import BatcherStopped, BatchingPolicy, DeadlineExceeded, DynamicBatcher, ModelStats, Tensors
from tests.support.batcher_fakes import Clock, Gated, turns_until
from tests.unit.test_batcher_delay_slack import VirtualTime, run_virtual

LONG = 5.0  # an upper bound no healthy step comes near (real time)


def x(rid: float, rows: int = 1) -> Tensors:
    return {"x": np.full((rows, 2), rid, np.float32)}


def test_stop_gives_a_run_that_never_ends_five_seconds_by_default() -> None:
    clock = VirtualTime()

    async def main() -> float:
        backend = Gated()  # its gate is never opened: the run outlives any drain
        b = DynamicBatcher([backend], BatchingPolicy(max_batch_size=8), ModelStats(), clock)
        b.start()
        running = asyncio.ensure_future(b.submit(x(1), 1))
        await backend.started.wait()
        began = clock()
        await b.stop()
        waited = clock() - began
        with pytest.raises(BatcherStopped):
            await running
        return waited

    assert run_virtual(clock, main()) == pytest.approx(5.0, abs=1e-6)


def stall_the_loop(seconds: float) -> None:
    """Block the event loop thread, as a loaded process does: the condition under test, not a wait
    for anything (its timers due meanwhile run late)."""
    time.sleep(seconds)


async def test_a_queued_requests_late_timer_wakes_the_next_batch_sooner() -> None:
    # A standing clock: no formation's wake-up ever comes due, so only the queue's expiry timers
    # (on real time) can tell the batcher that the loop runs late; and no run is seen (a run held
    # through the stall had made the estimate itself long enough to run the last request at once).
    clock = Clock()
    backend = Gated(gate_open=True)
    policy = BatchingPolicy(max_batch_size=8, max_queue_delay_s=10.0)  # a lone request waits to grow
    b = DynamicBatcher([backend], policy, ModelStats(), clock)
    b.start()
    try:
        # 10 ms left, 5 ms of margin: it waits to grow, and its expiry timer is due in 10 ms.
        expiring = asyncio.ensure_future(b.submit(x(1), 1, deadline=clock.now + 0.010))
        await turns_until(lambda: b.queued_requests == 1)
        stall_the_loop(0.080)  # that timer runs at least 70 ms late: the lateness counts its cap, 50 ms
        with pytest.raises(DeadlineExceeded):
            await asyncio.wait_for(expiring, LONG)
        assert backend.runs == []
        # 50 ms left: the fixed 5 ms margin (and 1% of the 50 ms) alone has it wait ~45 ms to grow
        # (for ever, on the standing clock), and its own expiry timer then fails it. With the
        # lateness seen, its wake-up is already due: it runs now.
        out = await asyncio.wait_for(b.submit(x(2), 1, deadline=clock.now + 0.050), LONG)
        assert out["y"].tolist() == [[4.0, 4.0]]
    finally:
        await b.stop(drain=False, timeout_s=0.1)
