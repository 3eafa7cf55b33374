"""RequestQueue's rules that mutation testing showed untested (batcher/queue.py): the retry hint
every refusal carries (how long until the queued work drains), the input bytes left uncounted
without budgets, the ragged plan a queued request carries, the levels sharing the default queue,
and the level policies' bounds in validate_policy."""

from __future__ import annotations

import numpy as np
import pytest

from batcher.admission import Admission
from batcher.budget import ByteBudget
from batcher.errors import Overloaded, QueueFull
from batcher.queue import RequestQueue, validate_policy
from batcher.ragged import RaggedPlan
from batcher.types import BatchingPolicy, LevelQueuePolicy

NOW = 10.0
X = {"x": np.zeros((1, 4), np.float32)}  # 16 bytes


def finish_s(level: int, rows: int, slack_s: float | None) -> float:
    """Seconds until an answer at `level` for `rows` more rows, `slack_s` before its deadline (None:
    a drain hint): distinct for every argument."""
    return 10.0 * level + rows + (0.5 if slack_s is None else 100.0 * slack_s)


def admission(policy: BatchingPolicy, priority: int = 0, deadline: float | None = None) -> Admission:
    return Admission.settle(policy, 1, now=NOW, deadline=deadline, priority=priority)


async def test_a_full_queue_hints_when_the_queued_work_will_have_drained() -> None:
    policy = BatchingPolicy(max_batch_size=4, max_queue_size=1, priority_levels=3, default_priority=2)
    q = RequestQueue(policy, lambda: NOW)
    q.admit(X, admission(policy), lambda rows: 0.0, finish_s)
    with pytest.raises(QueueFull) as refused:
        q.admit(X, admission(policy), lambda rows: 0.0, finish_s)
    assert refused.value.retry_after_s == finish_s(3, 0, None)  # behind every level, no rows, no deadline
    with pytest.raises(QueueFull) as refused:
        q.admit(X, admission(policy), lambda rows: 0.0)  # without a forecast: no hint
    assert refused.value.retry_after_s is None


async def test_a_byte_budget_refusal_hints_the_same_drain_time() -> None:
    policy = BatchingPolicy(max_batch_size=4, priority_levels=2)
    q = RequestQueue(policy, lambda: NOW, budgets=(ByteBudget(20, "max_queued_bytes_per_model"),))
    q.admit(X, admission(policy), lambda rows: 0.0, finish_s)
    with pytest.raises(QueueFull, match="max_queued_bytes_per_model=20") as refused:
        q.admit(X, admission(policy), lambda rows: 0.0, finish_s)
    assert refused.value.retry_after_s == finish_s(2, 0, None)


async def test_a_shed_request_hints_its_own_wait() -> None:
    policy = BatchingPolicy(max_batch_size=4, priority_levels=2)
    q = RequestQueue(policy, lambda: NOW)
    with pytest.raises(Overloaded) as refused:
        q.admit(X, admission(policy, priority=1, deadline=NOW + 5.0), lambda rows: 0.0, finish_s)
    assert refused.value.retry_after_s == finish_s(1, 1, 5.0)  # its own slack: 5 s


async def test_without_budgets_no_input_bytes_are_counted() -> None:
    policy = BatchingPolicy(max_batch_size=4)
    q = RequestQueue(policy, lambda: NOW)
    p = q.admit(X, admission(policy), lambda rows: 0.0)
    assert q.nbytes == 0 and p.handle.nbytes == 0
    counted = RequestQueue(policy, lambda: NOW, budgets=(ByteBudget(1024, "b"),))
    counted.admit(X, admission(policy), lambda rows: 0.0)
    assert counted.nbytes == 16


async def test_a_queued_request_carries_its_models_ragged_inputs() -> None:
    plan = RaggedPlan(frozenset({"x"}))
    ragged = BatchingPolicy(max_batch_size=4, ragged=plan)
    p = RequestQueue(ragged, lambda: NOW).admit(X, admission(ragged), lambda rows: 0.0)
    assert p.ragged == frozenset({"x"})
    plain = BatchingPolicy(max_batch_size=4)
    assert RequestQueue(plain, lambda: NOW).admit(X, admission(plain), lambda rows: 0.0).ragged == frozenset()


async def test_levels_without_a_policy_share_the_default_bound_apart_from_those_with_one() -> None:
    policy = BatchingPolicy(
        max_batch_size=4, max_queue_size=2, priority_levels=3, level_policies=((1, LevelQueuePolicy(5)),)
    )
    q = RequestQueue(policy, lambda: NOW)
    q.admit(X, admission(policy, priority=2), lambda rows: 0.0)
    q.admit(X, admission(policy, priority=3), lambda rows: 0.0)  # 2 of the shared 2
    shared = r"Exceeds maximum queue size \(2 requests waiting at priority 3; max_queue_size=2\)"
    with pytest.raises(QueueFull, match=shared):
        q.admit(X, admission(policy, priority=3), lambda rows: 0.0)
    for _ in range(5):  # level 1's own bound, apart from the shared one
        q.admit(X, admission(policy, priority=1), lambda rows: 0.0)
    assert q.full(1) and q.full(2) and len(q) == 7


def test_level_policies_at_their_bounds_are_valid_and_past_them_refused() -> None:
    validate_policy(
        BatchingPolicy(
            max_batch_size=4,
            priority_levels=2,
            level_policies=((2, LevelQueuePolicy(1, default_timeout_s=0.5)),),  # the last level
        )
    )
    for bad in (LevelQueuePolicy(1, default_timeout_s=0.0), LevelQueuePolicy(0)):
        policy = BatchingPolicy(max_batch_size=4, priority_levels=2, level_policies=((1, bad),))
        with pytest.raises(ValueError) as refused:
            validate_policy(policy)
        assert str(refused.value) == (
            "BatchingPolicy.level_policies must name levels 1..priority_levels, each with "
            f"max_queue_size >= 1 and a positive timeout, got {policy.level_policies!r}"
        )
