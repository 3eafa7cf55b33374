"""Batch formation: which queued requests run now, which are dropped, and when to look again.

Pure: no asyncio and no clock reads (the caller passes `now`), so every rule is unit-tested with
plain numbers. Times are absolute monotonic seconds. The caller calls `form_batch` only when an
instance has a free slot.

The batch rules are Triton's dynamic batcher (dynamic_batch_scheduler.cc, GetDynamicBatch), plus
deadline rules Triton lacks. `max_preferred` is the largest preferred size, else max_batch_size.

1. Skip cancelled requests; drop expired ones (past the give-up point, `give_up_at`: the hard
   deadline less the proven lower bound of a run of that request alone, `floor_s`, and the hop
   margin `hop_s`, the rule admission and the queue's timer follow too; or, with
   TimeoutAction.REJECT, its queue-policy timeout `reject_at` passed while it waited). Expired
   requests never run. A drop rests on the lower bound, not on the cautious `predict_s` that sizes
   batches (rule 3) and times waits (rule 4): a dropped request never runs, so a guess it was
   dropped on is never corrected (batcher/estimate.py). A request kept on the lower bound may run
   alone (rule 3 never refuses a batch its first request), and its size is then seen.
2. Order what is left by (priority, late, since, arrival): priority 1 first, FIFO within a
   priority. With TimeoutAction.DELAY a request past its queue-policy timeout is "late": it goes
   behind the requests of its own level still in time, never behind a lower level (Triton's
   PriorityQueue takes level by level, each level's main queue before its delayed one); it had gone
   behind every request in time. `since` is when its queue took it, except for a step of an
   ensemble request admitted whole (Admission.since): that admission, so the request's later steps
   go before new work admitted after it, which its admission's forecast put behind them.
3. Walk that order, adding rows to the pending batch. Before adding a request to a non-empty batch:
   if it would take the batch past max_preferred, mark the batch so far as the best prefix (unless
   a mark is set already; the prefix need not be a preferred size) and go on; stop if it would take
   the batch past max_batch_size, has other input dtypes or non-batch dimensions than the first
   (np.concatenate needs them equal; a ragged input's dimensions may differ: batcher/ragged.py),
   or would make the batch's predicted run miss the earliest hard deadline in it. After adding,
   mark the batch if its rows are a preferred size.
4. Decide, where "the delay is exceeded" means the oldest request in the batch has waited
   max_queue_delay_s (> 0): a mark and the delay not exceeded: run the marked prefix. Else the
   walk stopped, the batch reached max_preferred, the delay is exceeded or it is 0: run the whole
   batch. Else wait until the oldest request's delay runs out, but never past the point where
   each hard deadline in the batch could still be met by a run of the next preferred size (or of
   the batch as it is, if predicted longer) started a `WakeMargin` late; when that point has
   come, run the whole batch now. (A queue-policy timeout is Triton's: a request still waiting
   when it passes is rejected, whatever it waits for.)
5. max_batch_size 0 (no batch dimension): exactly one request per batch, at once.
6. `idle_dispatch`: as if max_queue_delay_s were 0 (a mark still cuts the batch; else all goes).

Each batch comes with why it was cut (`Formation.reason`, for /metrics): "full" (max_batch_size
reached, the next request would pass it or cannot join, or the model has no batch dimension),
"preferred" (a preferred size, or the largest one, was reached), "delay_expired" (its oldest
request waited max_queue_delay_s), "idle" (no delay to wait: work-conserving dispatch to a free
instance), "deadline" (waiting longer, or adding the next request, would miss a deadline in it).
The batcher adds "drain" for batches dispatched while it stops.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from batcher.types import Accept, BatchingPolicy, Computed, Tensors, TimeoutAction

H = TypeVar("H")

# Per input: name, dtype and the dimensions after the batch one. Equal keys concatenate.
ShapeKey = tuple[tuple[str, str, tuple[int, ...]], ...]
Predict = Callable[[int], float]
DispatchReason = Literal["full", "preferred", "delay_expired", "idle", "deadline", "drain"]


def shape_key(inputs: Tensors, ragged: frozenset[str] = frozenset()) -> ShapeKey:
    """Ragged inputs (batcher/ragged.py) join whatever their shape: only their dtype counts."""
    return tuple(
        sorted(
            (name, arr.dtype.str, () if name in ragged else tuple(arr.shape[1:]))
            for name, arr in inputs.items()
        )
    )


@dataclass(slots=True, eq=False)
class Pending(Generic[H]):
    """One queued request. `handle` is opaque here (the batcher keeps its future in it)."""

    inputs: Tensors
    rows: int
    priority: int  # 1 is the highest
    arrival: float
    seq: int  # arrival order, unique
    handle: H
    # After this it is never computed: the caller's deadline (settled once, at admission: see
    # batcher/admission.py).
    hard: float | None = None
    policy_deadline: float | None = None  # queue-policy timeout: demotes it within its level with DELAY
    reject_at: float | None = None  # queue-policy timeout with REJECT: dropped if still queued then
    ragged: frozenset[str] = frozenset()  # the model's ragged inputs: any shape joins
    counted: bool = True  # a request of the model's statistics (Admission.counted)
    queued_ns: int = 0  # its wait in the queue, as counted when it left for a batch
    accept: Accept | None = None  # its outputs checked before they are counted (Admission.accept)
    computed: Computed | None = None  # told its run's compute times once answered (Admission.computed)
    since: float = 0.0  # its place within its priority (rule 2), before its arrival number `seq`
    key: ShapeKey = field(init=False)

    def __post_init__(self) -> None:
        self.key = shape_key(self.inputs, self.ragged)


@dataclass(slots=True)
class Formation(Generic[H]):
    batch: list[Pending[H]] = field(default_factory=list)  # run now, in this order
    expired: list[Pending[H]] = field(default_factory=list)  # answer DeadlineExceeded
    cancelled: list[Pending[H]] = field(default_factory=list)  # forget, never compute
    wait_until: float | None = None  # set when waiting for the batch to grow
    reason: DispatchReason | None = None  # why `batch` was cut now (see the module docstring)


@dataclass(frozen=True, slots=True)
class WakeMargin:
    """How much sooner than its last moment a batch waiting to grow is woken for its deadlines
    (rule 4): `fixed_s` for its dispatcher waking late and the hops to the run and back, none of
    them in the predicted run; plus `share` of each request's budget (arrival to deadline) for a
    deadline its caller holds earlier than the server does (gRPC sends a deadline rounded up: to
    10 ms above 1 s, 100 ms above 10 s, at most 1%)."""

    fixed_s: float = 0.0
    share: float = 0.0

    def plus(self, late_s: float) -> WakeMargin:
        """This margin with `late_s` added to its fixed part: how late the loop has lately run
        timers (batcher/lateness.py), so a loaded process wakes its batches that much sooner."""
        return self if late_s <= 0.0 else WakeMargin(self.fixed_s + late_s, self.share)

    def start_by(self, p: Pending[Any], run_s: float) -> float | None:
        """When a run of `run_s` for `p` must start, at the latest, to be answered in time."""
        return None if p.hard is None else self.last_start(p.hard, p.arrival, run_s)

    def last_start(self, hard: float, arrival: float, run_s: float) -> float:
        """`start_by` for a request not queued (a sequence's waiting its turn): its hard deadline
        `hard`, settled at `arrival`."""
        return hard - run_s - self.fixed_s - self.share * max(0.0, hard - arrival)


NO_MARGIN = WakeMargin()


def cannot_finish(deadline: float | None, now: float, service_s: float) -> bool:
    """True when a run starting `now` and taking `service_s` would end after `deadline`."""
    return deadline is not None and (deadline <= now or deadline - now < service_s)


def give_up_at(hard: float, run_s: float, hop_s: float) -> float:
    """The last moment a request with hard deadline `hard` can still be started: its deadline less
    the least compute its rows need (`run_s`) and the hop to the run and back (`hop_s`); the
    deadline itself while that compute is unknown (0.0: an unknown cost never fails one early).
    Admission refuses after it, the queue's timer and formation give up at it: one rule."""
    return hard - run_s - hop_s if run_s > 0.0 else hard


def gives_up(hard: float | None, now: float, run_s: float, hop_s: float) -> bool:
    """Whether a request with hard deadline `hard` is past its give-up point (`give_up_at`) at `now`:
    refused at admission, dropped by formation (the queue's timer fires at that point)."""
    return cannot_finish(hard, now, run_s + hop_s if run_s > 0.0 else 0.0)


def _preferred(policy: BatchingPolicy) -> tuple[int, ...]:
    return tuple(sorted({s for s in policy.preferred_batch_sizes if 0 < s <= policy.max_batch_size}))


def target_rows(policy: BatchingPolicy) -> int:
    """Triton's max_preferred: the largest preferred size, else max_batch_size."""
    preferred = _preferred(policy)
    return preferred[-1] if preferred else policy.max_batch_size


def backlog_rows(rows: int, policy: BatchingPolicy) -> int:
    """Rows of the first batch `form_batch` runs from a queue of `rows` 1-row requests, none of them
    late (rules 3-4, no delay waited out): its largest preferred size once it holds that many, else
    the largest preferred size it holds, else all of it; 1 without a batch dimension."""
    if policy.max_batch_size == 0:
        return 1
    top = target_rows(policy)
    if rows >= top:
        return top
    return max((s for s in _preferred(policy) if s <= rows), default=rows)


def _next_target(rows: int, policy: BatchingPolicy) -> int:
    """Triton's next_preferred_batch_size: the smallest preferred size above `rows`."""
    return min((s for s in _preferred(policy) if s > rows), default=target_rows(policy))


def _delay_s(policy: BatchingPolicy) -> float:
    return 0.0 if policy.idle_dispatch else policy.max_queue_delay_s


def runs_alone_now(rows: int, policy: BatchingPolicy) -> bool:
    """Whether `form_batch` runs a lone request of `rows` rows at once (no deadline assumed).

    A tight hard deadline can also make it run at once (the slack rule); this ignores that.
    """
    return (
        policy.max_batch_size == 0
        or _delay_s(policy) == 0
        or rows in _preferred(policy)
        or rows >= target_rows(policy)
    )


def alone_reason(rows: int, policy: BatchingPolicy) -> DispatchReason:
    """Why `form_batch` runs a lone request of `rows` rows at once, where `runs_alone_now` says
    it does (the reason `_decide` gives such a batch)."""
    if policy.max_batch_size == 0:
        return "full"
    if rows in _preferred(policy):
        return "preferred"
    if rows >= policy.max_batch_size:
        return "full"
    return "preferred" if rows >= target_rows(policy) else "idle"


def _never(_: Pending[Any]) -> bool:
    return False


def form_batch(
    queue: Iterable[Pending[H]],
    now: float,
    policy: BatchingPolicy,
    predict_s: Predict,
    is_cancelled: Callable[[Pending[H]], bool] = _never,
    margin: WakeMargin = NO_MARGIN,
    floor_s: Predict | None = None,
    hop_s: float = 0.0,
) -> Formation[H]:
    """Decide the next batch from `queue` at time `now` (see the module docstring for the rules).

    `predict_s(rows)` is the predicted backend time of a run of `rows` rows (0.0 when unknown), a
    cautious one: it sizes batches and times waits. `floor_s(rows)`: what runs seen prove such a run
    takes at least, for dropping a request unrun (rule 1, past `give_up_at` with `hop_s`, the rule
    admission and the queue's timer follow); None: `predict_s`.
    `margin`: how much sooner a batch waiting to grow is woken for its deadlines (rule 4).
    Callers must already reject requests with more rows than max_batch_size.
    """
    predict = _memo(predict_s)
    floor = predict if floor_s is None else _memo(floor_s)
    out: Formation[H] = Formation()
    live = _in_order(queue, now, policy, floor, hop_s, is_cancelled, out)
    if not live:
        return out
    if policy.max_batch_size == 0:
        out.batch, out.reason = live[:1], "full"
        return out
    walk = _walk(live, now, policy, predict)
    out.batch, out.wait_until, out.reason = _decide(walk, now, policy, predict, margin)
    return out


def _memo(predict_s: Predict) -> Predict:
    """`predict_s`, asked once per row count within one formation."""
    memo: dict[int, float] = {}

    def predict(rows: int) -> float:
        s = memo.get(rows)
        if s is None:
            s = memo[rows] = predict_s(rows)
        return s

    return predict


def _in_order(
    queue: Iterable[Pending[H]],
    now: float,
    policy: BatchingPolicy,
    floor: Predict,
    hop_s: float,
    is_cancelled: Callable[[Pending[H]], bool],
    out: Formation[H],
) -> list[Pending[H]]:
    """Rules 1-2: file cancelled and expired requests in `out` (expired past `give_up_at` on
    `floor`, the proven lower bound of a run, and `hop_s`); the rest in batching order."""
    live: list[Pending[H]] = []
    for p in queue:
        if is_cancelled(p):
            out.cancelled.append(p)
        elif gives_up(p.hard, now, floor(p.rows), hop_s) or (p.reject_at is not None and p.reject_at <= now):
            out.expired.append(p)
        else:
            live.append(p)
    # Whether a level delays: its own queue policy's action (priority_queue_policy), else the default.
    delays = policy.timeout_action is TimeoutAction.DELAY
    own = {level: q.timeout_action is TimeoutAction.DELAY for level, q in policy.level_policies}

    def order(p: Pending[H]) -> tuple[int, bool, float, int]:
        late = own.get(p.priority, delays) and p.policy_deadline is not None and p.policy_deadline <= now
        return (p.priority, late, p.since, p.seq)

    live.sort(key=order)
    return live


@dataclass(slots=True)
class _Walk(Generic[H]):
    batch: list[Pending[H]] = field(default_factory=list)  # Triton's pending batch
    rows: int = 0
    mark: int | None = None  # length of the best prefix (Triton's best_preferred_batch_size)
    send_now: bool = False  # stopped at a request that cannot join: waiting cannot grow the batch
    stop: DispatchReason = "full"  # why it stopped: "full", or "deadline" when joining would miss one
    earliest: float | None = None  # earliest hard deadline in `batch`


def _walk(live: Sequence[Pending[H]], now: float, policy: BatchingPolicy, predict: Predict) -> _Walk[H]:
    """Rule 3: grow the pending batch in order; mark the best prefix on the way."""
    w: _Walk[H] = _Walk()
    top, preferred = target_rows(policy), _preferred(policy)
    for p in live:
        if w.batch:
            grown = w.rows + p.rows
            if grown > top and w.mark is None:
                w.mark = len(w.batch)  # Triton keeps walking: a delay exceeded runs more than this
            joined = earliest(w.earliest, p.hard)
            if grown > policy.max_batch_size or p.key != w.batch[0].key:
                w.send_now = True
                break
            if cannot_finish(joined, now, predict(grown)):
                w.send_now, w.stop = True, "deadline"
                break
        w.batch.append(p)
        w.rows += p.rows
        w.earliest = earliest(w.earliest, p.hard)
        if w.rows in preferred:
            w.mark = len(w.batch)
    return w


def _decide(
    w: _Walk[H], now: float, policy: BatchingPolicy, predict: Predict, margin: WakeMargin
) -> tuple[list[Pending[H]], float | None, DispatchReason | None]:
    """Rule 4: (batch to run now, None, why), or ([], when to look again, None)."""
    delay = _delay_s(policy)
    oldest = min(p.arrival for p in w.batch)
    # Compared as `now >= wake`, the same sum as the wait below: no float gap between the two.
    exceeded = delay > 0 and now >= oldest + delay
    if w.mark is not None and not exceeded:  # without preferred sizes, marked at max_batch_size
        return w.batch[: w.mark], None, "preferred" if _preferred(policy) else "full"
    if w.send_now or w.rows >= target_rows(policy) or exceeded or delay == 0:
        return w.batch, None, _why_now(w, policy, exceeded)
    wake = oldest + delay
    if w.earliest is not None:
        # Waiting is for a bigger batch: leave time for the next preferred size (or this batch, if
        # predicted longer) to run in, and the margin. Woken with no margin, at 50 us before its
        # deadline, a lone request was failed at the deadline (3 of 3, delay 3 s).
        run_s = max(predict(_next_target(w.rows, policy)), predict(w.rows))
        for p in w.batch:
            start_by = margin.start_by(p, run_s)
            if start_by is not None and start_by < wake:
                wake = start_by
    if wake <= now:
        return w.batch, None, "deadline"
    return [], wake, None


def _why_now(w: _Walk[Any], policy: BatchingPolicy, exceeded: bool) -> DispatchReason:
    """Why the whole pending batch runs at once (rule 4's second case)."""
    if w.send_now:
        return w.stop
    if w.rows >= policy.max_batch_size:
        return "full"
    if w.rows >= target_rows(policy):
        return "preferred"
    return "delay_expired" if exceeded else "idle"


def earliest(a: float | None, b: float | None) -> float | None:
    """The earlier of two times, either of which may be None (no bound)."""
    if a is None:
        return b
    return a if b is None else min(a, b)
