"""A queued request is answered DeadlineExceeded as soon as even a run started at once could not end
before its deadline, not at the deadline itself.

Answered at the server's copy of its deadline, a request waiting in a busy queue was answered after
its client's own timer had ended the call (gRPC sends a deadline rounded up, and the answer has to
travel): the client saw gRPC's "Deadline Exceeded", never the server's reason. Now its timer fires
at its deadline less the least compute its rows need (the estimator's `predict_seen`, a bound runs
seen prove) and the hop to the run and back; exactly at its deadline while nothing has run.
"""

from __future__ import annotations

import asyncio
import re

import numpy as np
import pytest

from batcher import BatchingPolicy, DeadlineExceeded, DynamicBatcher, ModelStats
from batcher.admission import Admission
from batcher.errors import cannot_be_met
from batcher.queue import Request, RequestQueue
from tests.support.batcher_fakes import Clock, Gated
from tests.support.loop_timers import armed_about, armed_delay, loop_now

ROW = {"x": np.zeros((1, 2), np.float32)}
LONG = 5.0  # an upper bound no healthy wait comes near
HOP_S = 0.005
EARLY = (
    r"^deadline cannot be met: about \d+\.\d{1,3} ms of compute needed \(the fastest recent run of \d+ rows "
    r"or fewer(?:, \d+\.\d ms when seen, faded with its age)?\)"  # a faded floor says its run
    r" plus a \d+\.\d{1,3} ms margin, \d+\.\d{1,3} ms left, while waiting in the queue$"
)


class Runs:
    """The least compute a run of some rows needs, as the test sets it (the estimator's stand-in)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, rows: int, now: float) -> float:
        return self.seconds


def queue_with(runs: Runs, now: float = 100.0) -> RequestQueue:
    return RequestQueue(BatchingPolicy(max_batch_size=8), lambda: now, min_run_s=runs, hop_s=HOP_S)


def admit(q: RequestQueue, hard: float, now: float = 100.0) -> Request:
    a = Admission(rows=1, priority=1, arrival=now, deadline=hard, policy_deadline=None, hard=hard)
    return q.admit(ROW, a, lambda rows: 0.0)


async def test_the_timer_fires_when_a_run_could_no_longer_end_in_time() -> None:
    q = queue_with(Runs(0.250))
    before = loop_now()
    p = admit(q, hard=100.3)
    # 300 ms left, a run takes 250 ms at least and the hop 5 ms: hopeless 45 ms from now.
    assert armed_delay(p, before)[0] <= 0.3 - 0.250 - HOP_S + 1e-3
    with pytest.raises(DeadlineExceeded, match=EARLY) as caught:
        await asyncio.wait_for(p.handle.future, LONG)
    assert "about 250.0 ms of compute needed" in str(caught.value)
    assert "plus a 5.0 ms margin, 300.0 ms left" in str(caught.value)
    assert len(q) == 0


async def test_with_no_run_seen_it_fires_at_the_deadline_itself() -> None:
    q = queue_with(Runs(0.0))  # an unknown cost never fails a request early
    before = loop_now()
    p = admit(q, hard=100.3)
    assert armed_about(p, before, 0.3), armed_delay(p, before)
    q.remove(p)


async def test_an_estimate_that_moved_down_meanwhile_is_waited_for() -> None:
    runs = Runs(0.250)
    q = queue_with(runs)
    p = admit(q, hard=100.3)
    armed = 100.3 - 0.250 - HOP_S
    runs.seconds = 0.100  # faded with age, or faster runs seen since
    before = loop_now()
    q._expire(p, 0.0, armed)  # what its timer does when due
    assert not p.handle.future.done() and len(q) == 1
    assert armed_about(p, before, 0.150), armed_delay(p, before)  # the difference, then checked again
    q._expire(p, 0.0, armed + 0.150)  # due again: hopeless now
    with pytest.raises(DeadlineExceeded, match=EARLY):
        await asyncio.wait_for(p.handle.future, LONG)


async def test_a_queue_policy_timeout_before_it_is_not_checked_again() -> None:
    q = queue_with(Runs(0.250))
    now = 100.0
    a = Admission(
        rows=1, priority=1, arrival=now, deadline=100.3, policy_deadline=100.01, hard=100.3, reject_at=100.01
    )
    before = loop_now()
    p = q.admit(ROW, a, lambda rows: 0.0)
    assert armed_about(p, before, 0.01), armed_delay(p, before)  # the REJECT timeout comes first
    q.remove(p)


async def test_a_request_in_a_busy_queue_is_answered_before_its_deadline_and_counted_expired() -> None:
    # A clock the test moves: the figures the answer gives are the test's, however late the
    # machine runs the queue's timer (on a loaded CI machine, real time had faded the estimate to
    # 199.56 ms, or let the timer fire past the deadline itself).
    clock = Clock()
    be, stats = Gated(), ModelStats()
    b = DynamicBatcher([be], BatchingPolicy(max_batch_size=4), stats, clock)
    b.start()
    try:
        running = asyncio.ensure_future(b.submit(ROW, 1))
        await asyncio.wait_for(be.started.wait(), LONG)
        for _ in range(4):  # runs of 1 row take 200 ms: learnt while the instance is held
            b.estimator.observe(1, 0.200, clock())
        waiting = asyncio.ensure_future(b.submit(ROW, 1, deadline=clock() + 0.300))
        before = loop_now()
        await asyncio.sleep(0)  # admitted and queued, its timer armed
        (queued,) = b._queue.values()  # to read its timer: due at its give-up point, not its deadline
        assert armed_about(queued, before, 0.300 - 0.200 - 0.005), armed_delay(queued, before)
        clock.now += 0.150  # before its timer can run (the loop runs it after this step)
        with pytest.raises(DeadlineExceeded, match=EARLY) as caught:
            await asyncio.wait_for(waiting, LONG)
        # Answered when hopeless, and before its deadline: 150 ms left of its 300.
        assert "plus a 5.0 ms margin, 150.0 ms left" in str(caught.value), str(caught.value)
        assert stats.expired == 1 and b.queued_requests == 0
        be.gate.set()
        await asyncio.wait_for(running, LONG)
        assert be.runs == [1]  # never computed
    finally:
        be.gate.set()
        await b.stop()


@pytest.mark.parametrize(
    ("run_s", "left_s", "shown"),
    [(0.250, 0.300, "250.0"), (0.19956, 0.20455, "199.56"), (0.1, 0.1049995, "100.000")],
)
def test_the_early_pattern_reads_each_number_of_decimals_the_message_uses(
    run_s: float, left_s: float, shown: str
) -> None:
    # One decimal, or two or three where one would read as met: CI saw "199.56 ms ... 5.00 ms
    # margin, 204.55 ms left" from a busy queue, which a one-decimal pattern had refused.
    said = str(cannot_be_met(1, run_s, 0.005, left_s, ", while waiting in the queue"))
    assert f"about {shown} ms" in said
    assert re.match(EARLY, said), said
