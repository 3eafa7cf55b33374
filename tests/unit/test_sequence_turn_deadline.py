"""A sequence request waiting behind its own sequence's earlier request gives up where a queued
request does (its deadline less the floor of its rows and the hop margin), says why in the queue's
words, and counts `expired`.

The tester's case (seq_turn.py): during a hung run, a same-sequence request with a 0.5 s deadline
was answered at 501-503 ms (gRPC's own "Deadline Exceeded" in 2 of 4 runs), and
`sluiceway_deadline_outcome_total` missed it (expired +1 for the other sequence only).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

from batcher import BatchingPolicy, DeadlineExceeded, DynamicBatcher, ModelStats, Tensors, turn_deadline
from batcher.admission import Admission
from batcher.budget import ByteBudget
from batcher.errors import QueueSizeReached
from batcher.sequence import SequenceBatcher
from batcher.sequence_types import SequenceLimits, SequenceSpec, StateSpec
from tests.support.batcher_fakes import Clock

LONG = 5.0
GAVE_UP = (
    r"^deadline cannot be met: about \d+\.\d{1,3} ms of compute needed \(the fastest recent run of 1 rows "
    r"or fewer(?:, \d+\.\d ms when seen, faded with its age)?\)"  # a faded floor says its run
    r" plus a \d+\.\d{1,3} ms margin, \d+\.\d{1,3} ms left, while waiting for the sequence's earlier "
    r"requests to run$"
)


class Held:
    """An accumulator backend (out = acc + x) whose runs wait while `hold` is clear."""

    def __init__(self) -> None:
        self.hold = asyncio.Event()
        self.hold.set()
        self.started = asyncio.Event()
        self.runs = 0

    async def run(self, inputs: Tensors) -> Tensors:
        self.runs += 1
        self.started.set()
        await self.hold.wait()
        out = inputs["acc"] + inputs["x"]
        return {"out": out, "acc_out": out.copy()}


def spec() -> SequenceSpec:
    initial = np.zeros((1, 2), np.float32)
    initial.flags.writeable = False
    return SequenceSpec((), (StateSpec("acc", "acc_out", initial),), 60.0)


def x() -> dict[str, np.ndarray]:
    return {"x": np.ones((1, 2), np.float32)}


async def started_then_held(be: Held, b: DynamicBatcher, sb: SequenceBatcher) -> asyncio.Future[Tensors]:
    """Sequence 1 started, then its next request running, held by `be`."""
    await asyncio.wait_for(sb.infer(1, x(), b.admission(1), start=True), LONG)
    be.hold.clear()
    be.started.clear()
    running = asyncio.ensure_future(sb.infer(1, x(), b.admission(1)))
    await asyncio.wait_for(be.started.wait(), LONG)
    return running


async def test_a_request_behind_its_sequences_slow_run_gives_up_early_and_counts_expired(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A clock the test moves: the answer's figures are the test's, however late a loaded machine
    # runs the wait's timer (on real time one had fired past the deadline: "deadline exceeded").
    clock = Clock()
    waits = waits_recorded(monkeypatch)
    be, stats = Held(), ModelStats()
    b = DynamicBatcher([be], BatchingPolicy(max_batch_size=4), stats, clock)
    b.start()
    sb = SequenceBatcher(
        b, spec(), SequenceLimits(4, 1024), model="m", clock=clock, deadlines=b.turn_deadline
    )
    try:
        slow = await started_then_held(be, b, sb)  # holds the sequence's turn
        for _ in range(16):  # runs of 1 row take 200 ms (a window of them, the fast start's gone)
            b.estimator.observe(1, 0.200, clock())
        waits.clear()
        waiting = asyncio.ensure_future(sb.infer(1, x(), b.admission(1, deadline=clock() + 0.300)))
        await asyncio.sleep(0)  # waiting for its turn, until its give-up point
        assert waits == [pytest.approx(0.300 - 0.200 - 0.005)]  # not its deadline
        clock.now += 0.150  # before that wait can end (the loop runs its timer after this step)
        with pytest.raises(DeadlineExceeded, match=GAVE_UP) as caught:
            await asyncio.wait_for(waiting, LONG)
        # Answered when hopeless, and before its deadline: 150 ms left of its 300.
        assert "plus a 5.0 ms margin, 150.0 ms left" in str(caught.value), str(caught.value)
        assert stats.expired == 1 and stats.shed == 0
        be.hold.set()
        assert (await asyncio.wait_for(slow, LONG))["out"].tolist() == [[2.0, 2.0]]
        assert be.runs == 2  # the request that gave up never ran
    finally:
        be.hold.set()
        await b.stop()


def waits_recorded(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The timeouts of the waits for a turn (batcher/turn_deadline.wait_turn's asyncio.wait_for),
    in order; the test's own waits of LONG left out."""
    waits: list[float] = []
    real = asyncio.wait_for

    async def recorded(awaitable: Any, timeout: float | None) -> Any:
        if timeout is not None and timeout < LONG:
            waits.append(timeout)
        return await real(awaitable, timeout)

    monkeypatch.setattr(turn_deadline.asyncio, "wait_for", recorded)
    return waits


class Moving:
    """A give-up point the test moves (the floor fading while the request waits); counts give-ups."""

    def __init__(self, at: float) -> None:
        self.at = at
        self.gave = 0

    def give_up_at(self, a: Admission, now: float) -> float | None:
        return self.at

    def gave_up(self, a: Admission, now: float, where: str) -> DeadlineExceeded:
        self.gave += 1
        return DeadlineExceeded("gave up" + where)

    def cut(self, a: Admission, now: float) -> None:
        pass


async def test_a_give_up_point_that_moved_later_meanwhile_is_waited_for() -> None:
    from batcher.turn_deadline import wait_turn

    lock = asyncio.Lock()
    await lock.acquire()  # the sequence's earlier request runs
    now = time.monotonic()
    deadlines = Moving(now + 0.02)
    a = Admission(1, 1, now, now + 10.0, None, now + 10.0)
    turn = asyncio.ensure_future(wait_turn(lock, a, time.monotonic, deadlines))
    deadlines.at = now + 10.0  # the floor faded: hopeless no more
    await asyncio.sleep(0)  # (a turn of the loop, not a wait for time: the lock decides)
    while not lock._waiters or all(w.cancelled() for w in lock._waiters):  # type: ignore[attr-defined]
        await asyncio.sleep(0)
    lock.release()  # its turn comes
    await asyncio.wait_for(turn, LONG)
    assert lock.locked() and deadlines.gave == 0


async def test_a_timer_that_fires_early_does_not_give_up_before_the_point(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """uvloop rounds timers to whole milliseconds, so a wait for the give-up point could end up to
    ~1.2 ms early, and the request was failed then, its message's figures saying the deadline could
    still be met (a tester: 1 refusal in 12). A wait that ends early now waits out the rest."""
    from batcher import turn_deadline

    real_wait_for = asyncio.wait_for
    fired: list[float] = []

    async def early_once(aw: Any, timeout: float | None) -> Any:
        if not fired:  # the first timer "fires" at once, 50 ms before it was due
            fired.append(time.monotonic())
            aw.close()
            raise asyncio.TimeoutError
        return await real_wait_for(aw, timeout)

    monkeypatch.setattr(turn_deadline.asyncio, "wait_for", early_once)
    lock = asyncio.Lock()
    await lock.acquire()  # the sequence's earlier request runs, past the deadline
    now = time.monotonic()
    a = Admission(1, 1, now, now + 0.05, None, now + 0.05)
    with pytest.raises(DeadlineExceeded):
        await real_wait_for(turn_deadline.wait_turn(lock, a, time.monotonic, None), LONG)
    assert fired and time.monotonic() >= now + 0.05  # given up at its point, not when the timer fired


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_caller_cut_at_its_deadline_waiting_its_turn_counts_expired_an_early_cancel_none() -> None:
    """gRPC cut the call at its deadline while it waited its turn (no floor known: its give-up point
    is the deadline itself): `expired`, as a queued request cut so; it had been in no outcome. A
    caller that cancels well before its deadline is in none."""
    be, stats = Held(), ModelStats()
    b = DynamicBatcher([be], BatchingPolicy(max_batch_size=4), stats)
    b.start()
    clock = FakeClock()  # the sequence's (its waits' `now`); the runs keep the real one
    limits = SequenceLimits(4, 1024)
    sb = SequenceBatcher(b, spec(), limits, model="m", clock=clock, deadlines=b.turn_deadline)
    try:
        slow = await started_then_held(be, b, sb)  # holds the sequence's turn
        at = clock.now
        waits = [
            asyncio.ensure_future(sb.infer(1, x(), Admission(1, 1, at, at + 10.0, None, at + 10.0)))
            for _ in range(2)
        ]
        while sb._turns[1].waiting < 3:  # both wait for the turn (a turn of the loop each)
            await asyncio.sleep(0)
        cancelled_early, cut = waits
        cancelled_early.cancel()  # its caller went 10 s before its deadline
        with pytest.raises(asyncio.CancelledError):
            await cancelled_early
        assert stats.expired == 0
        clock.now = at + 10.0 - 0.001  # its client's timer: the server's copy less the transit
        cut.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cut
        assert stats.expired == 1 and stats.late == 0 and stats.shed == 0
        be.hold.set()
        assert (await asyncio.wait_for(slow, LONG))["out"].tolist() == [[2.0, 2.0]]
        assert be.runs == 2  # neither waiting request ran
    finally:
        be.hold.set()
        await b.stop()


async def test_requests_waiting_for_their_sequences_turn_count_against_the_queues_bounds() -> None:
    """A sequence's later requests wait for its turn outside the queue: 200 of them behind one held
    run had passed max_queue_size 4 and a 2,000-byte budget, counted nowhere (a tester). They are
    held against both: refused as the queue refuses, and given back once their turn comes."""
    be, stats = Held(), ModelStats()
    budget = ByteBudget(80, "max_queued_bytes_per_model")  # five requests' 16 bytes (x and state)
    b = DynamicBatcher([be], BatchingPolicy(max_batch_size=4, max_queue_size=3), stats, byte_budgets=[budget])
    b.start()
    sb = SequenceBatcher(b, spec(), SequenceLimits(4, 1024), model="m", deadlines=b.turn_deadline)
    try:
        first = await started_then_held(be, b, sb)  # holds the sequence's turn
        waiting = [asyncio.ensure_future(sb.infer(1, x(), b.admission(1))) for _ in range(3)]
        for _ in range(100):  # loop turns until each waits for its turn (a condition, not a time)
            if budget.used == 3 * 16:
                break
            await asyncio.sleep(0)
        assert budget.used == 3 * 16  # held for their state too, queued with it at their turn
        assert b.queued_bytes == 3 * 16  # the gauge shows them (sluiceway_queue_bytes had not)
        with pytest.raises(
            QueueSizeReached, match=r"\(3 requests waiting, 3 of them for their sequence's turn;"
        ) as refused:
            await asyncio.wait_for(sb.infer(1, x(), b.admission(1)), LONG)
        assert refused.value.retry_after_s is not None  # RetryInfo, as the queue's own refusals
        assert stats.rejections.get("queue_full") == 1 and b.queued_requests == 3  # the held ones
        be.hold.set()
        sums = [(await asyncio.wait_for(w, LONG))["out"][0, 0] for w in (first, *waiting)]
        assert sums == [2.0, 3.0, 4.0, 5.0]  # every held one ran, in order
        assert budget.used == 0 and b.queued_requests == 0 and b.queued_bytes == 0
        assert (await asyncio.wait_for(sb.infer(1, x(), b.admission(1)), LONG))["out"][0, 0] == 6.0
    finally:
        be.hold.set()
        await b.stop()
