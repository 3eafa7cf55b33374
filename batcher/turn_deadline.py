"""A sequence id's turn (its requests run one at a time), and the queue's give-up rule for a
request not queued yet: a sequence request waiting for its sequence's earlier requests to run
(batcher/sequence.py).

Such a request waited on its sequence's lock until its deadline itself, then failed "deadline
exceeded while waiting ..." in no deadline outcome: behind a hung run its client heard gRPC's own
"Deadline Exceeded" (2 of 4 runs), and `sluiceway_deadline_outcome_total` missed it. It now gives
up where a queued request does (its deadline less the floor of its rows and the hop margin,
`RequestQueue.give_up`), says so in the queue's words, and counts `expired`, as a queued request.
A caller whose call gRPC cut at its deadline while it waited (before that answer: the floor was
unknown, or its client's clock ran ahead) counts `expired` too, as a queued request cut so does
(batch_io.cut_at_deadline); it had been in no outcome.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

from batcher.admission import Admission
from batcher.errors import BatcherError, DeadlineExceeded, QueueFull, QueueSizeReached
from batcher.form import WakeMargin
from batcher.queue import RequestQueue
from batcher.stats import ModelStats
from batcher.types import Tensors


class TurnDeadline:
    """One model version's give-up rule and `expired` count, for requests outside its queue."""

    def __init__(
        self,
        queue: RequestQueue,
        stats: ModelStats,
        margin: WakeMargin,
        drain_s: Callable[[], float] | None = None,
    ) -> None:
        self._queue = queue
        self._drain_s = drain_s  # when the queued and running work will have drained: a retry hint
        self._stats = stats
        self._margin = margin  # the queue's rule for a cut caller (batch_io.cut_at_deadline)

    def give_up_at(self, a: Admission, now: float) -> float | None:
        """When request `a` can no longer be answered in time, as of `now` (None: no deadline)."""
        return None if a.hard is None else self._queue.give_up(a.rows, a.hard, now)

    def gave_up(self, a: Admission, now: float, where: str) -> DeadlineExceeded:
        """Count `a`, given up at `now` before it was queued, `expired`; the error to answer it."""
        self._stats.expired += a.counted
        return self._queue.gave_up(a.rows, a.hard, now, where)

    def hold(self, inputs: Tensors, a: Admission, extra: int = 0) -> int:
        """Count `a`, about to wait for its turn, against the queue's bounds as a queued request
        (RequestQueue.hold); refused as the queue refuses, counted so. Its bytes, for `release`."""
        try:
            return self._queue.hold(inputs, a.priority, extra)
        except BatcherError as exc:
            if a.counted:
                self._stats.record_refusal(exc, isinstance(exc, QueueSizeReached))
            if isinstance(exc, QueueFull) and self._drain_s is not None:  # RetryInfo, as the queue's
                exc.retry_after_s = self._drain_s()
            raise

    def release(self, nbytes: int) -> None:
        self._queue.release_hold(nbytes)

    def cut(self, a: Admission, now: float) -> None:
        """Count `a`, whose caller went while it waited for its turn, `expired` when by `now` its
        caller's copy of the deadline may have passed (a cut at its deadline, not a cancel)."""
        if a.counted and a.hard is not None and now >= self._margin.last_start(a.hard, a.arrival, 0.0):
            self._stats.expired += 1


# Said of a request given up while it waited for its turn.
WAITING_TURN = ", while waiting for the sequence's earlier requests to run"


class TurnDeadlines(Protocol):
    """What a request waiting its turn needs of its runner (TurnDeadline, a DynamicBatcher's)."""

    def give_up_at(self, a: Admission, now: float) -> float | None: ...

    def gave_up(self, a: Admission, now: float, where: str) -> DeadlineExceeded: ...

    def cut(self, a: Admission, now: float) -> None: ...

    def hold(self, inputs: Tensors, a: Admission, extra: int = 0) -> int: ...

    def release(self, nbytes: int) -> None: ...


class Turn:
    """One sequence id's requests holding or waiting for their turn (batcher/sequence.py; apart from
    the sequence: an end and the next start of the id, back to back, keep their order)."""

    __slots__ = ("lock", "retired", "waiting")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()  # FIFO: the id's requests run in arrival order
        self.waiting = 0
        # Why its waiting requests will not run: their version was retired meanwhile.
        self.retired: str | None = None


async def take_turn(
    turn: Turn, a: Admission, clock: Callable[[], float], deadlines: TurnDeadlines | None
) -> None:
    """Take the id's lock for request `a`, counted in `turn.waiting`: at once with none of its id
    ahead (no timer), else until its give-up point (`wait_turn`)."""
    if a.hard is None or turn.waiting == 1:
        await turn.lock.acquire()
        return
    await wait_turn(turn.lock, a, clock, deadlines)


async def wait_turn(
    lock: asyncio.Lock, a: Admission, clock: Callable[[], float], deadlines: TurnDeadlines | None
) -> None:
    """Acquire `lock` for request `a` (with a deadline), or raise DeadlineExceeded at its give-up
    point by `deadlines` (None: its deadline itself, uncounted), checked again when due: the floor
    may have faded meanwhile, moving the point later. A cancelled wait is told to `deadlines.cut`."""
    assert a.hard is not None
    hard = a.hard

    def give_up_at(now: float) -> float:
        found = None if deadlines is None else deadlines.give_up_at(a, now)
        return hard if found is None else found

    now = clock()
    due = give_up_at(now)
    wait = max(0.0, due - now)
    while True:
        timer_due = time.monotonic() + wait  # the loop's timers run on real time, whatever `clock` says
        try:
            await asyncio.wait_for(lock.acquire(), timeout=wait)
            return
        except asyncio.TimeoutError:
            pass
        except asyncio.CancelledError:  # its caller went: at its deadline, a deadline outcome
            if deadlines is not None:
                deadlines.cut(a, clock())
            raise
        early = timer_due - time.monotonic()
        if early > 0:  # uvloop rounds timers to whole ms: up to ~1.2 ms early (its figures then
            wait = max(early, 0.001)  # said it could still be met); at least 1 ms, never a spin
            continue
        now = clock()
        later = give_up_at(now)
        if later - due <= 0.001:  # measured against the point waited for: a standing clock ends it
            break
        wait, due = later - due, later
    if deadlines is None:
        raise DeadlineExceeded(f"deadline exceeded{WAITING_TURN}")
    raise deadlines.gave_up(a, now, WAITING_TURN)
