"""The admission record: what a request asks of the batcher, settled once at the edge.

A request's deadline, priority, rows and timeout arrive loosely (a gRPC deadline, request
parameters, the batch dimension). `Admission.settle` combines them with the model's policy into
one frozen value, once, and everything downstream (the fast path, the queue, formation, the check
after a run) reads the same value instead of recomputing it.

Priority follows Triton (InferenceRequest::SetPriority): 0, or a level above the model's
`priority_levels`, means the model's default level. Triton does not refuse such a request, so
neither do we.

The request's own `timeout` counts only where the policy allows the override (Triton's
`allow_timeout_override`); otherwise it is ignored, and the gRPC deadline still counts.
"""

from __future__ import annotations

from typing import NamedTuple

from batcher.errors import TooManyRows
from batcher.types import BatchingPolicy, LevelQueuePolicy, TimeoutAction


class Admission(NamedTuple):
    """One request's terms, settled against its model's policy. Times are absolute clock seconds.

    Immutable; a NamedTuple rather than a frozen dataclass because one is built per request and a
    frozen dataclass's __init__ costs several times more (measured ~1.5 vs ~0.3 us here)."""

    rows: int  # rows it adds to a batch; 1 for a model without a batch dimension
    priority: int  # a level of the model's (1 is the highest), the default applied
    arrival: float  # when it was settled (clock seconds)
    deadline: float | None  # the caller's: the earliest of its gRPC deadline and `timeout` (if allowed)
    policy_deadline: float | None  # the model's queue-policy timeout (demotes with DELAY)
    hard: float | None  # never computed, nor answered as a success, after this
    # False for a shadow copy: computed (inference and execution counts) but not a request of the
    # model's (its queue, deadline, rejection and per-request compute figures leave it out).
    counted: bool = True

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
        caller = own if deadline is None else (deadline if own is None else min(deadline, own))
        policy_deadline = None if queue.default_timeout_s is None else now + queue.default_timeout_s
        hard = caller
        if queue.timeout_action is TimeoutAction.REJECT and policy_deadline is not None:
            hard = policy_deadline if hard is None else min(hard, policy_deadline)
        return cls(rows, level, now, caller, policy_deadline, hard)
