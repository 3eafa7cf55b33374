"""The admission record: what a request asks of the batcher, settled once at the edge.

A request's deadline, priority, rows and timeout arrive loosely (a gRPC deadline, request
parameters, the batch dimension). `Admission.settle` combines them with the model's policy into
one frozen value, once, and everything downstream (the fast path, the queue, formation, the check
after a run) reads the same value instead of recomputing it.

Priority follows Triton (InferenceRequest::SetPriority): 0, or a level above the model's
`priority_levels`, means the model's default level. Triton does not refuse such a request, so
neither do we.

The model's queue-policy timeout (`default_timeout_microseconds`) bounds the time a request
waits in the queue, as in Triton, not its compute: with REJECT a request still queued when it
passes is failed (`reject_at`), with DELAY it goes behind the others of its priority level
(`policy_deadline`, batcher/form.py rule 2). Folded into the hard deadline, it had also refused
or failed every request whose run alone took longer (a 150 ms REJECT timeout on a 160 ms model
failed 8 of 8 requests on an idle server). Where the
policy allows the override (Triton's `allow_timeout_override`), the request's own `timeout`
replaces it when shorter; otherwise it is ignored. A model without a queue-policy timeout has
nothing to override: there a request's `timeout` bounds it as its gRPC deadline does (ours; Triton
ignores it). The gRPC deadline always counts.
"""

from __future__ import annotations

from typing import NamedTuple

from batcher.errors import TooManyRows
from batcher.form import earliest
from batcher.types import Accept, BatchingPolicy, Computed, LevelQueuePolicy, TimeoutAction


class Admission(NamedTuple):
    """One request's terms, settled against its model's policy. Times are absolute clock seconds.

    Immutable; a NamedTuple rather than a frozen dataclass because one is built per request and a
    frozen dataclass's __init__ costs several times more (measured ~1.5 vs ~0.3 us here)."""

    rows: int  # rows it adds to a batch; 1 for a model without a batch dimension
    priority: int  # a level of the model's (1 is the highest), the default applied
    arrival: float  # when it was settled (clock seconds)
    deadline: float | None  # the caller's: its gRPC deadline, and `timeout` where no queue policy has one
    policy_deadline: float | None  # the queue-policy timeout (or the request's shorter override)
    hard: float | None  # never computed, nor answered as a success, after this (the caller's deadline)
    # False for a shadow copy: computed (inference and execution counts) but not a request of the
    # model's (its queue, deadline, rejection and per-request compute figures leave it out).
    counted: bool = True
    reject_at: float | None = None  # with REJECT: failed if still queued then (policy_deadline)
    accept: Accept | None = None  # checks its outputs before they count (None: any are its answer)
    computed: Computed | None = None  # told its run's compute times once answered (an ensemble's step)
    # A step of an ensemble request admitted whole (server/models/ensemble_admission.py): when that
    # admission was. The step is queued as if it had arrived then, ahead of what came after, and not
    # shed again: its ensemble's admission forecast every step and reserved their rows.
    since: float | None = None

    @classmethod
    def settle(
        cls,
        policy: BatchingPolicy,
        rows: int,
        *,
        now: float,
        deadline: float | None = None,
        timeout_s: float | None = None,
        priority: int = 0,
    ) -> Admission:
        """The record for a request of `rows` rows, or raise why it can never be admitted
        (TooManyRows; ValueError for arguments no caller should pass: rows < 1, a timeout that
        is not positive, a negative priority)."""
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive or None, got {timeout_s}")
        if priority < 0:
            raise ValueError(f"priority must be >= 0, got {priority}")
        if policy.max_batch_size > 0:
            if rows < 1:
                raise ValueError(f"rows must be at least 1, got {rows}")
            if rows > policy.max_batch_size:
                raise TooManyRows(
                    f"request has {rows} rows but the model accepts at most {policy.max_batch_size}"
                )
        else:
            rows = 1  # no batch dimension: every request is one run of "batch size 1"
        level = priority if 1 <= priority <= policy.priority_levels else policy.default_priority
        # A level with a queue policy of its own (priority_queue_policy) follows that one.
        q = policy.level_policy(level) if policy.level_policies else None
        queue: BatchingPolicy | LevelQueuePolicy = policy if q is None else q
        own = None if timeout_s is None or not queue.allow_timeout_override else now + timeout_s
        if queue.default_timeout_s is None:  # no queue timeout: `timeout` is a deadline (ours)
            caller = earliest(deadline, own)
            return cls(rows, level, now, caller, None, caller)
        policy_deadline = earliest(now + queue.default_timeout_s, own)  # an override only shortens
        reject_at = policy_deadline if queue.timeout_action is TimeoutAction.REJECT else None
        return cls(rows, level, now, deadline, policy_deadline, deadline, reject_at=reject_at)
