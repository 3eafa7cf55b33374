"""Per-priority-level queue policies (Triton's priority_queue_policy): a level with a policy of its
own follows its max_queue_size, timeout, timeout action and allow_timeout_override; the other
levels follow the default fields and share max_queue_size."""

from __future__ import annotations

import numpy as np
import pytest

from batcher.admission import Admission
from batcher.errors import QueueFull
from batcher.form import Pending, form_batch
from batcher.queue import RequestQueue, validate_policy
from batcher.types import BatchingPolicy, LevelQueuePolicy, TimeoutAction

NOW = 100.0
X = {"x": np.zeros((1, 2), np.float32)}


def policy(**levels: LevelQueuePolicy) -> BatchingPolicy:
    return BatchingPolicy(
        max_batch_size=8,
        max_queue_size=2,
        priority_levels=3,
        default_priority=3,
        default_timeout_s=50.0,
        allow_timeout_override=False,
        level_policies=tuple((int(k[1:]), v) for k, v in levels.items()),
    )


FAST = LevelQueuePolicy(max_queue_size=3, default_timeout_s=5.0, allow_timeout_override=True)


def settle(p: BatchingPolicy, priority: int, timeout_s: float | None = None) -> Admission:
    return Admission.settle(p, 1, now=NOW, timeout_s=timeout_s, priority=priority)


def test_a_level_with_its_own_policy_takes_its_timeout_and_override() -> None:
    p = policy(l1=FAST)
    own = settle(p, 1, timeout_s=1.0)  # its override shortens the level's queue timeout
    assert (own.policy_deadline, own.reject_at, own.hard) == (NOW + 1.0, NOW + 1.0, None)
    assert settle(p, 1).policy_deadline == NOW + 5.0
    other = settle(p, 2, timeout_s=1.0)  # default policy: the request's timeout does not count
    assert (other.policy_deadline, other.reject_at, other.hard) == (NOW + 50.0, NOW + 50.0, None)


async def test_each_level_with_a_policy_has_its_own_bound_and_the_others_share_theirs() -> None:
    q = RequestQueue(policy(l1=FAST), lambda: NOW)
    for _ in range(3):
        q.admit(X, settle(q._policy, 1), lambda rows: 0.0)
    own = r"\(3 requests waiting at priority 1; priority_queue_policy\[1\] max_queue_size=3\)"
    with pytest.raises(QueueFull, match=own):
        q.admit(X, settle(q._policy, 1), lambda rows: 0.0)
    assert q.full(1) and not q.full(2)  # for the refusal's reason in /metrics: by count
    q.admit(X, settle(q._policy, 2), lambda rows: 0.0)
    q.admit(X, settle(q._policy, 3), lambda rows: 0.0)
    with pytest.raises(QueueFull, match=r"\(2 requests waiting at priority 2; max_queue_size=2\)"):
        q.admit(X, settle(q._policy, 2), lambda rows: 0.0)
    assert len(q) == 5


def _pending(seq: int, priority: int, policy_deadline: float) -> Pending[int]:
    return Pending(inputs=X, rows=1, priority=priority, arrival=NOW, seq=seq, handle=seq,
                   hard=None, policy_deadline=policy_deadline)  # fmt: skip


def test_only_levels_whose_action_is_delay_demote_late_requests_and_only_within_the_level() -> None:
    delay = LevelQueuePolicy(max_queue_size=4, default_timeout_s=1.0, timeout_action=TimeoutAction.DELAY)
    p = BatchingPolicy(max_batch_size=1, priority_levels=2, level_policies=((1, delay),))
    late_delayed = _pending(0, 1, NOW - 1)  # level 1 delays: behind level 1's requests still in time
    in_time = _pending(1, 1, NOW + 10)
    waiting = _pending(2, 2, NOW + 10)
    assert form_batch([late_delayed, in_time, waiting], NOW, p, lambda rows: 0.0).batch == [in_time]
    # Never behind a lower level, as Triton (it had been: `waiting` went first).
    assert form_batch([late_delayed, waiting], NOW, p, lambda rows: 0.0).batch == [late_delayed]
    p_reject = BatchingPolicy(max_batch_size=1, priority_levels=2, level_policies=((1, FAST),))
    assert form_batch([late_delayed, in_time, waiting], NOW, p_reject, lambda rows: 0.0).batch == [
        late_delayed
    ]


def test_level_policies_are_validated() -> None:
    with pytest.raises(ValueError, match="level_policies"):
        validate_policy(BatchingPolicy(max_batch_size=8, priority_levels=2, level_policies=((3, FAST),)))
    bad = LevelQueuePolicy(max_queue_size=0)
    with pytest.raises(ValueError, match="level_policies"):
        validate_policy(BatchingPolicy(max_batch_size=8, priority_levels=2, level_policies=((1, bad),)))
