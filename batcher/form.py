"""Batch formation: which queued requests run now, which are dropped, and when to look again.

Pure: no asyncio and no clock reads (the caller passes `now`), so every rule is unit-tested with
plain numbers. Times are absolute monotonic seconds.

Rules, in order:
1. Skip cancelled requests; drop expired ones (hard deadline passed, or it cannot be met even by a
   run of that request alone, given the predicted service time). Expired requests never run.
2. Order what is left by (late, priority, arrival): priority 1 first, FIFO within a priority. With
   TimeoutAction.DELAY a request past its queue-policy timeout is "late": it goes behind every
   request still in time (it is still computed unless its hard deadline passes). With REJECT the
   policy timeout is part of the hard deadline instead.
3. Take requests in that order while they fit: rows within max_batch_size, same input dtypes and
   non-batch dimensions as the first (np.concatenate needs them), and the batch's predicted time
   still meets the earliest deadline in it. Stop at the first that does not fit; it stays queued
   in its place (no smaller request jumps past it, so order within a priority holds).
   max_batch_size 0 (no batch dimension): exactly one request per batch.
4. Run now if the batch is full (reached the largest preferred size or max_batch_size), cannot grow
   (the next request did not fit), or max_queue_delay_s is 0. Otherwise wait for more requests
   until the oldest has waited max_queue_delay_s, and never past the point where the earliest
   deadline in the batch could still be met by a full batch.
5. With preferred sizes, cut the batch to the longest prefix within the largest preferred size
   that the taken rows reach; the rest stays queued for the next batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from batcher.types import BatchingPolicy, Tensors, TimeoutAction

H = TypeVar("H")

# Per input: name, dtype and the dimensions after the batch one. Equal keys concatenate.
ShapeKey = tuple[tuple[str, str, tuple[int, ...]], ...]


def shape_key(inputs: Tensors) -> ShapeKey:
    return tuple(sorted((name, arr.dtype.str, tuple(arr.shape[1:])) for name, arr in inputs.items()))


@dataclass(slots=True, eq=False)
class Pending(Generic[H]):
    """One queued request. `handle` is opaque here (the batcher keeps its future in it)."""

    inputs: Tensors
    rows: int
    priority: int  # 1 is the highest
    arrival: float
    seq: int  # arrival order, unique
    handle: H
    deadline: float | None = None  # hard: the caller's deadline and timeout
    policy_deadline: float | None = None  # queue-policy timeout: expires (REJECT) or demotes (DELAY)
    key: ShapeKey = field(init=False)

    def __post_init__(self) -> None:
        self.key = shape_key(self.inputs)


@dataclass(slots=True)
class Formation(Generic[H]):
    batch: list[Pending[H]] = field(default_factory=list)  # run now, in this order
    expired: list[Pending[H]] = field(default_factory=list)  # answer DeadlineExceeded
    cancelled: list[Pending[H]] = field(default_factory=list)  # forget, never compute
    wait_until: float | None = None  # set when waiting for the batch to grow


def hard_deadline(p: Pending[Any], policy: BatchingPolicy) -> float | None:
    """The time after which `p` must not be computed: its deadline, and with REJECT the policy's."""
    return earliest_hard(p.deadline, p.policy_deadline, policy)


def earliest_hard(
    deadline: float | None, policy_deadline: float | None, policy: BatchingPolicy
) -> float | None:
    """`hard_deadline` from the two deadlines, before a Pending exists."""
    if policy.timeout_action is TimeoutAction.REJECT and policy_deadline is not None:
        return policy_deadline if deadline is None else min(deadline, policy_deadline)
    return deadline


def cannot_finish(deadline: float | None, now: float, service_s: float) -> bool:
    """True when a run starting `now` and taking `service_s` would end after `deadline`."""
    return deadline is not None and (deadline <= now or deadline - now < service_s)


def target_rows(policy: BatchingPolicy) -> int:
    """Rows at which a batch counts as full: the largest preferred size, else max_batch_size."""
    limit = policy.max_batch_size
    preferred = [s for s in policy.preferred_batch_sizes if 0 < s <= limit]
    return max(preferred) if preferred else limit


def _never(_: Pending[Any]) -> bool:
    return False


def form_batch(
    queue: Iterable[Pending[H]],
    now: float,
    policy: BatchingPolicy,
    predict_s: Callable[[int], float],
    is_cancelled: Callable[[Pending[H]], bool] = _never,
) -> Formation[H]:
    """Decide the next batch from `queue` at time `now` (see the module docstring for the rules).

    `predict_s(rows)` is the predicted backend time of a run of `rows` rows (0.0 when unknown).
    Callers must already reject requests with more rows than max_batch_size.
    """
    out: Formation[H] = Formation()
    memo: dict[int, float] = {}

    def predict(rows: int) -> float:
        s = memo.get(rows)
        if s is None:
            s = memo[rows] = predict_s(rows)
        return s

    delay_late = policy.timeout_action is TimeoutAction.DELAY
    live: list[tuple[bool, int, int, Pending[H], float | None]] = []
    for p in queue:
        if is_cancelled(p):
            out.cancelled.append(p)
            continue
        hard = hard_deadline(p, policy)
        if cannot_finish(hard, now, predict(p.rows)):
            out.expired.append(p)
            continue
        late = delay_late and p.policy_deadline is not None and p.policy_deadline <= now
        live.append((late, p.priority, p.seq, p, hard))
    if not live:
        return out
    live.sort(key=lambda e: (e[0], e[1], e[2]))

    limit = policy.max_batch_size
    target = target_rows(policy)
    batch: list[Pending[H]] = []
    rows = 0
    earliest: float | None = None
    blocked = False  # the next request in order did not fit: waiting cannot grow this batch
    for _, _, _, p, hard in live:
        if batch:
            if limit == 0 or rows + p.rows > limit or p.key != batch[0].key:
                blocked = True
                break
            joined = _earliest(earliest, hard)
            if cannot_finish(joined, now, predict(rows + p.rows)):
                blocked = True
                break
        batch.append(p)
        rows += p.rows
        earliest = _earliest(earliest, hard)
        if limit == 0 or rows >= target:
            break

    full = limit == 0 or blocked or rows >= target
    if not full and policy.max_queue_delay_s > 0:
        wake = min(p.arrival for p in batch) + policy.max_queue_delay_s
        if earliest is not None:
            # Leave time for a full batch to run before the earliest deadline in it.
            wake = min(wake, earliest - predict(target))
        if wake > now:
            out.wait_until = wake
            return out
    out.batch = _cut_preferred(batch, rows, policy) if limit > 0 else batch
    return out


def _earliest(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


def _cut_preferred(batch: Sequence[Pending[H]], rows: int, policy: BatchingPolicy) -> list[Pending[H]]:
    reached = [s for s in policy.preferred_batch_sizes if 0 < s <= min(rows, policy.max_batch_size)]
    if not reached:
        return list(batch)
    cap = max(reached)
    cut: list[Pending[H]] = []
    taken = 0
    for p in batch:
        if taken + p.rows > cap:
            break
        cut.append(p)
        taken += p.rows
    # Multi-row requests may not land within `cap` at all: then no preferred size is reachable.
    return cut or list(batch)
