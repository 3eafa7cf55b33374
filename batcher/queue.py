"""Admission and bookkeeping of queued requests: one bounded queue shared by a model's instances.

Requests live in a dict keyed by arrival number: it keeps arrival order, and removing a request
that was cancelled, expired or dispatched is O(1). Each request with a hard deadline has a timer
that answers DeadlineExceeded while it is still queued, even when every backend is busy and no
batch is being formed: as soon as even a run started at once could not end before its deadline
(the deadline less the run of its rows, by the estimator's proven lower bound, less the hop to the
run and back), so its caller hears the server's reason before its own timer ends the call; at the
deadline itself while no run has been seen (an unknown cost never fails a request early).

Admission refuses by the same rule (`give_up_at`: the same run figure and hop, batcher/hop.py): a
request is admitted only while its give-up point is ahead (checking the run alone had admitted some
with up to 5 ms more slack than the run, which then failed ~1 ms later).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from batcher.admission import Admission
from batcher.budget import ByteBudget, charge, input_bytes
from batcher.errors import (
    DeadlineExceeded,
    Overloaded,
    QueueFull,
    QueueSizeReached,
    QueueTimedOut,
    cannot_be_met,
)
from batcher.form import Pending, cannot_finish, earliest, give_up_at, gives_up
from batcher.hop import hop_at
from batcher.types import BatchingPolicy, QueueTrace, Tensors, TimeoutAction


@dataclass(slots=True, eq=False)
class Ticket:
    """The batcher's handle on a queued request: the caller's future and its expiry timer."""

    future: asyncio.Future[Tensors]
    timer: asyncio.TimerHandle | None = None
    nbytes: int = 0  # input bytes charged to the queue's byte budgets while queued
    trace: QueueTrace | None = None  # a traced request: its run is recorded there
    # Set when its batch's run boarded it (run_batch): from then on it is computed even if its
    # caller goes; before, a caller that goes leaves it dropped unrun.
    boarded: bool = False


Request = Pending[Ticket]


def is_done(p: Request) -> bool:
    """Answered already, or the caller was cancelled (its await cancelled the future)."""
    return p.handle.future.done()


def settle_error(p: Request, exc: BaseException) -> None:
    """Fail `p` with `exc` unless it already has an outcome (never resolve a done future)."""
    if not p.handle.future.done():
        p.handle.future.set_exception(exc)


class RequestQueue:
    """Waiting requests in arrival order. `changed` is set whenever one is added."""

    def __init__(
        self,
        policy: BatchingPolicy,
        clock: Callable[[], float],
        on_remove: Callable[[], None] = lambda: None,
        budgets: Sequence[ByteBudget] = (),
        on_expire: Callable[[Request], None] = lambda p: None,
        *,
        min_run_s: Callable[[int, float], float] = lambda rows, now: 0.0,
        hop_s: float | Callable[[float], float] = 0.0,
        on_late: Callable[[float, float], None] = lambda late_s, now: None,
        floor_basis: Callable[[int, float], str] | None = None,
    ) -> None:
        """`on_remove`: after any request leaves; `on_expire`: one expired on its timer. `min_run_s(rows,
        now)`: what a run of `rows` rows takes at least (0.0: unknown); `hop_s`: the time to a run and
        back, outside it, or its figure at `now` (batcher/hop.py). `on_late(late_s, now)`: a timer ran
        `late_s` late. `floor_basis(rows, now)`: `min_run_s` in words (None: the fastest recent run)."""
        self._policy = policy
        self._on_expire = on_expire
        self._min_run_s = min_run_s
        self._hop_s = hop_at(hop_s)
        self._on_late = on_late
        self._floor_basis = floor_basis
        self._budgets = tuple(budgets)  # input bytes of queued requests, bounded (batcher/budget.py)
        self._clock = clock
        self._on_remove = on_remove
        self._items: dict[int, Request] = {}
        self._rows_by_level: dict[int, int] = {}  # queued rows per priority level, for admission
        self._count_by_level: dict[int, int] = {}  # queued requests per level, for per-level bounds
        self.held = self.held_bytes = 0  # requests held outside for their sequence's turn (`hold`)
        self._seq = itertools.count()
        self.changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def values(self) -> Iterable[Request]:
        return self._items.values()

    @property
    def nbytes(self) -> int:
        """Input bytes of the queued and held requests (0 without byte budgets); any thread may read."""
        return self.held_bytes + sum(p.handle.nbytes for p in list(self._items.values()))

    def _room(self, level: int) -> tuple[int, int]:
        """(requests queued, the bound) that a new request at `level` is checked against: its
        level's own max_queue_size, else max_queue_size shared by the levels without their own."""
        policy, held = self._policy, self.held
        if not policy.level_policies:
            return len(self._items) + held, policy.max_queue_size
        own = policy.level_policy(level)
        if own is not None:
            return self._count_by_level.get(level, 0) + held, own.max_queue_size
        others = sum(self._count_by_level.get(lvl, 0) for lvl, _ in policy.level_policies)
        return len(self._items) - others + held, policy.max_queue_size

    def _refuse_if_full(self, level: int, retry_after_s: float | None) -> None:
        queued, limit = self._room(level)
        if queued >= limit:
            levels = self._policy.level_policies
            where = f" at priority {level}" if levels else ""
            own = levels and self._policy.level_policy(level) is not None
            bound = f"priority_queue_policy[{level}] max_queue_size" if own else "max_queue_size"
            held = f", {self.held} of them for their sequence's turn" if self.held else ""
            raise QueueSizeReached(
                f"Exceeds maximum queue size ({queued} requests waiting{where}{held}; {bound}={limit})",
                retry_after_s=retry_after_s,
            )

    def hold(self, inputs: Tensors, level: int, extra: int = 0) -> int:
        """Count a request waiting outside the queue for its sequence's turn as queued, with `extra`
        bytes besides `inputs` (state, controls); its bytes, for `release_hold`."""
        self._refuse_if_full(level, None)
        charge(self._budgets, nbytes := input_bytes(inputs) + extra if self._budgets else 0)
        self.held, self.held_bytes = self.held + 1, self.held_bytes + nbytes
        return nbytes

    def release_hold(self, nbytes: int) -> None:  # its turn came, or it went
        self.held, self.held_bytes = self.held - 1, self.held_bytes - nbytes
        for budget in self._budgets:
            budget.release(nbytes)

    def full(self, level: int) -> bool:
        """Whether a new request at `level` would find its bound (by count) reached."""
        queued, limit = self._room(level)
        return queued >= limit

    def rows_ahead(self, level: int) -> int:
        """Queued rows that would be served before a new request at priority `level` (1 = first)."""
        return sum(rows for lvl, rows in self._rows_by_level.items() if lvl <= level)

    def check(
        self,
        a: Admission,
        predict_s: Callable[[int], float],
        finish_s: Callable[[int, int, float | None], float] | None = None,
    ) -> None:
        """Whether request `a` may be served now, without queueing it; raises why not (DeadlineExceeded,
        Overloaded: not for an ensemble's step, Admission.since). The fast path runs what it accepts.

        `predict_s(rows)`: compute seconds of a batch of `rows`; more than the time left is
        DeadlineExceeded (no server could make it). `finish_s(level, rows, slack)`: seconds until
        the request (`slack` seconds from its deadline; None: a drain hint) is answered behind the
        work queued and running now; more is Overloaded, shed now rather than expire queued.
        """
        hard = a.hard
        if hard is None:
            return
        now = self._clock()
        if hard <= now:
            raise DeadlineExceeded("deadline exceeded before the request was queued")
        run_s = predict_s(a.rows)
        if gives_up(hard, now, run_s, hop_s := self._hop_s(now)):
            raise cannot_be_met(a.rows, run_s, hop_s, hard - now, basis=self.basis(a.rows, now))
        if finish_s is not None and a.since is None:  # (an ensemble's step: forecast at its admission)
            wait_s = finish_s(a.priority, a.rows, hard - now)
            if cannot_finish(hard, now, wait_s):
                raise Overloaded(
                    f"overloaded: about {wait_s * 1e3:.1f} ms until an answer behind the queued "
                    f"work, {(hard - now) * 1e3:.1f} ms left before the deadline",
                    retry_after_s=wait_s,
                )

    def admit(
        self,
        inputs: Tensors,
        a: Admission,
        predict_s: Callable[[int], float],
        finish_s: Callable[[int, int, float | None], float] | None = None,
        trace: QueueTrace | None = None,
    ) -> Request:
        """Queue a request, or raise why not: as `check`, and QueueFull beyond max_queue_size."""

        # A refusal's retry hint: about when the queued and running work will have drained.
        def drain_s() -> float | None:
            return None if finish_s is None else finish_s(self._policy.priority_levels, 0, None)

        self._refuse_if_full(a.priority, drain_s())
        self.check(a, predict_s, finish_s)
        nbytes = input_bytes(inputs) if self._budgets else 0  # its batch's run is sized by it too
        try:
            charge(self._budgets, nbytes)
        except QueueFull as exc:
            exc.retry_after_s = drain_s()
            raise
        loop, now = asyncio.get_running_loop(), self._clock()
        p: Request = Pending(
            inputs=inputs,
            rows=a.rows,
            priority=a.priority,
            arrival=a.arrival,
            seq=next(self._seq),
            handle=Ticket(loop.create_future(), nbytes=nbytes, trace=trace),
            hard=a.hard,
            policy_deadline=a.policy_deadline,
            reject_at=a.reject_at,
            ragged=self._policy.ragged.inputs if self._policy.ragged else frozenset(),
            counted=a.counted,
            accept=a.accept,
            computed=a.computed,
            since=now if a.since is None else a.since,
        )
        due = earliest(self._give_up_at(p, now), a.reject_at)
        if due is not None:
            self._arm(p, max(0.0, due - now), due)
        self._items[p.seq] = p
        self._rows_by_level[a.priority] = self._rows_by_level.get(a.priority, 0) + a.rows
        self._count_by_level[a.priority] = self._count_by_level.get(a.priority, 0) + 1
        self.changed.set()
        return p

    async def wait_changed(self, until: float | None) -> float | None:
        """Until `changed` is set, or `clock()` reaches `until` (None: no time limit): formation's
        answer cannot change before either. A timer that fires early (uvloop's, rounded to whole
        milliseconds, fire up to ~1.2 ms early) is waited out here, not answered by forming the same
        batch again (the dispatcher formed 9-21 times per batch waiting out a delay). In the last
        half millisecond uvloop runs a timer on the next turn (it rounds delays to whole
        milliseconds), so the loop turns over and over: a batch's delay ends on time, at some CPU
        (BENCHMARKS.md, "The dispatcher's wake-ups"; a thread for that stretch was tried: later).
        Returns how late past `until` it returned when that ended the wait, None when woken."""
        while True:
            left = None if until is None else until - self._clock()
            if left is not None and left <= 0:
                return -left
            try:
                # Back to formation once woken, even if another dispatcher cleared it meanwhile.
                await asyncio.wait_for(self.changed.wait(), timeout=left)
                return None
            except asyncio.TimeoutError:
                pass  # timed out, perhaps early: read the clock again

    def remove(self, p: Request) -> bool:
        """Take `p` out of the queue; False if it was not there (dispatched or gone already)."""
        if self._items.pop(p.seq, None) is None:
            return False
        self._rows_by_level[p.priority] -= p.rows
        self._count_by_level[p.priority] -= 1
        for budget in self._budgets:
            budget.release(p.handle.nbytes)
        if p.handle.timer is not None:
            p.handle.timer.cancel()
            p.handle.timer = None
        self._on_remove()
        return True

    def fail(self, p: Request, exc: BaseException) -> None:
        self.remove(p)
        settle_error(p, exc)

    def fail_all(self, make_exc: Callable[[], BaseException]) -> None:
        for p in list(self._items.values()):
            self.fail(p, make_exc())

    def _give_up_at(self, p: Request, now: float) -> float | None:
        """When `p`, still queued, can no longer be answered in time: its deadline less a run of
        its rows started then and the hop to it and back; its deadline itself while the estimator
        knows nothing (0.0). None without a deadline."""
        return None if p.hard is None else self.give_up(p.rows, p.hard, now)

    def give_up(self, rows: int, hard: float, now: float) -> float:
        """The give-up point (`give_up_at`) at `now` of a request of `rows` rows and deadline `hard`."""
        return give_up_at(hard, self._min_run_s(rows, now), self._hop_s(now))

    def gave_up(self, rows: int, hard: float | None, now: float, where: str) -> DeadlineExceeded:
        """Why a request of `rows` rows past its give-up point at `now` is failed `where` (", while
        ..."): `cannot_be_met` with the figures, or its deadline passed (no run seen, or no deadline)."""
        run_s = self._min_run_s(rows, now)
        if hard is not None and hard > now and run_s > 0.0:
            return cannot_be_met(rows, run_s, self._hop_s(now), hard - now, where, self.basis(rows, now))
        return DeadlineExceeded(f"deadline exceeded{where}")

    def _arm(self, p: Request, delay: float, at: float) -> None:
        """Run `_expire` in `delay` seconds, for the clock time `at` (the give-up point or the
        queue-policy timeout it was armed for)."""
        due = time.monotonic() + delay  # the loop's timers run on real time, whatever `clock` says
        p.handle.timer = asyncio.get_running_loop().call_later(delay, self._expire, p, due, at)

    def _expire(self, p: Request, due: float, at: float = float("inf")) -> None:
        """`p`'s timer, due at monotonic `due`, armed for clock time `at` (inf: expire it now)."""
        left = due - time.monotonic()
        if left > 0:
            # uvloop rounds timers to whole milliseconds: they fire up to ~1.2 ms early. Waiting at
            # least 1 ms more keeps it from spinning on 0 ms timers; a late expiry costs nothing (a
            # batch formed meanwhile drops an expired request itself).
            self._arm(p, max(left, 0.001), at)
            return
        p.handle.timer = None
        now = self._clock()
        self._on_late(-left, now)
        if p.reject_at is None or p.reject_at > at:  # armed for its deadline: check again
            # The estimate may have moved down since (it fades with age): wait the difference,
            # measured against the point armed for, so a test's standing clock cannot spin it.
            later = self._give_up_at(p, now)
            if later is not None and later - at > 0.001:
                self._arm(p, later - at, later)
                return
        if self.remove(p):
            self._on_expire(p)
            run_s = self._min_run_s(p.rows, now)
            settle_error(p, expired_in_queue(p, now, run_s, self._hop_s(now), self.basis(p.rows, now)))

    def basis(self, rows: int, now: float) -> str | None:
        """What the least compute of `rows` rows (`min_run_s`) is, in words (None: the default's)."""
        return None if self._floor_basis is None else self._floor_basis(rows, now)


def expired_in_queue(
    p: Request, now: float, run_s: float = 0.0, hop_s: float = 0.0, basis: str | None = None
) -> DeadlineExceeded:
    """Why a queued request is failed: its queue-policy timeout (REJECT), or its deadline: passed,
    or (before it, with `run_s` the least compute it needs, `basis` what that figure is, and
    `hop_s` the margin) too close for a run to end in time."""
    if p.reject_at is not None and p.reject_at <= now and (p.hard is None or p.reject_at < p.hard):
        waited_ms = (now - p.arrival) * 1e3
        return QueueTimedOut(
            f"request timeout expired: queued {waited_ms:.1f} ms, past the model's queue policy "
            f"timeout (default_timeout_microseconds, or the request's shorter timeout; "
            f"timeout_action REJECT)"
        )
    if p.hard is not None and p.hard > now and run_s > 0.0:
        return cannot_be_met(p.rows, run_s, hop_s, p.hard - now, ", while waiting in the queue", basis)
    return DeadlineExceeded("deadline exceeded while waiting in the queue")


def validate_policy(policy: BatchingPolicy) -> None:
    """Raise ValueError naming the first field of `policy` that cannot work."""
    checks = (
        ("max_batch_size", policy.max_batch_size >= 0, "must be >= 0"),
        ("max_queue_delay_s", policy.max_queue_delay_s >= 0, "must be >= 0"),
        ("max_queue_size", policy.max_queue_size >= 1, "must be >= 1"),
        ("priority_levels", policy.priority_levels >= 1, "must be >= 1"),
        (
            "default_priority",
            1 <= policy.default_priority <= policy.priority_levels,
            "must be between 1 and priority_levels",
        ),
        (
            "default_timeout_s",
            policy.default_timeout_s is None or policy.default_timeout_s > 0,
            "must be positive or None",
        ),
        ("max_batches_in_flight", policy.max_batches_in_flight >= 1, "must be >= 1"),
        (
            "level_policies",
            all(
                1 <= lvl <= policy.priority_levels
                and q.max_queue_size >= 1
                and (q.default_timeout_s is None or q.default_timeout_s > 0)
                for lvl, q in policy.level_policies
            ),
            "must name levels 1..priority_levels, each with max_queue_size >= 1 and a positive timeout",
        ),
        (
            "preferred_batch_sizes",
            all(0 < s <= max(policy.max_batch_size, 1) for s in policy.preferred_batch_sizes),
            "must each be between 1 and max_batch_size",
        ),
    )
    for name, ok, rule in checks:
        if not ok:
            raise ValueError(f"BatchingPolicy.{name} {rule}, got {getattr(policy, name)!r}")
    if not isinstance(policy.timeout_action, TimeoutAction):
        raise ValueError(
            f"BatchingPolicy.timeout_action must be a TimeoutAction, got {policy.timeout_action!r}"
        )
