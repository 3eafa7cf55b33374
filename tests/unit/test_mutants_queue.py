"""RequestQueue and validate_policy pinned where mutation testing (scripts/mutation.sh) found them
untested: the messages that say why, boundaries, and the bookkeeping of a removed request."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import numpy as np
import pytest

from batcher.admission import Admission
from batcher.errors import DeadlineExceeded, Overloaded, QueueSizeReached
from batcher.queue import RequestQueue, validate_policy
from batcher.types import BatchingPolicy

INPUTS = {"x": np.zeros((1, 2), np.float32)}


def adm(hard: float | None = None, policy_deadline: float | None = None) -> Admission:
    return Admission(
        rows=1, priority=1, arrival=0.0, deadline=hard, policy_deadline=policy_deadline, hard=hard
    )


def free(rows: int) -> float:
    return 0.0


def queue(now: float = 0.0, **policy: Any) -> RequestQueue:
    return RequestQueue(BatchingPolicy(**{"max_batch_size": 8, **policy}), lambda: now)


def test_a_deadline_reached_at_admission_says_so() -> None:
    with pytest.raises(DeadlineExceeded, match=r"^deadline exceeded before the request was queued$"):
        queue(now=1.0).check(adm(hard=1.0), free)


def test_refusals_give_the_times_in_milliseconds() -> None:
    q = queue(now=1.0)
    with pytest.raises(DeadlineExceeded, match=r"about 500\.0 ms of compute needed \(.*\), 300\.0 ms left$"):
        q.check(adm(hard=1.3), lambda rows: 0.5)
    with pytest.raises(
        Overloaded, match=r"about 700\.0 ms until an answer .* 300\.0 ms left before the deadline$"
    ):
        q.check(adm(hard=1.3), free, lambda level, rows, slack: 0.7)


async def test_a_full_queue_says_how_many_wait() -> None:
    q = queue(max_queue_size=1)
    q.admit(INPUTS, adm(), free)
    said = r"^Exceeds maximum queue size \(1 requests waiting; max_queue_size=1\)$"
    with pytest.raises(QueueSizeReached, match=said):
        q.admit(INPUTS, adm(), free)


async def test_admit_keeps_the_policy_deadline_and_times_the_expiry_from_now() -> None:
    q = queue(now=0.0)
    p = q.admit(INPUTS, adm(hard=0.01, policy_deadline=0.5), free)
    assert p.policy_deadline == 0.5 and p.hard == 0.01
    assert p.handle.timer is not None
    assert p.handle.timer.when() - asyncio.get_running_loop().time() <= 0.01


async def test_remove_is_true_once_and_drops_the_timer() -> None:
    q = queue()
    p = q.admit(INPUTS, adm(hard=10.0), free)
    assert q.remove(p) is True
    assert p.handle.timer is None
    assert q.remove(p) is False


async def test_expiry_in_the_queue_says_where() -> None:
    q = queue(now=0.0)
    p = q.admit(INPUTS, adm(hard=0.001), free)
    with pytest.raises(DeadlineExceeded, match=r"^deadline exceeded while waiting in the queue$"):
        await asyncio.wait_for(p.handle.future, 5.0)


BAD = [
    ("max_batch_size", {"max_batch_size": -1}, "must be >= 0"),
    ("max_queue_delay_s", {"max_queue_delay_s": -0.1}, "must be >= 0"),
    ("max_queue_size", {"max_queue_size": 0}, "must be >= 1"),
    ("priority_levels", {"priority_levels": 0, "default_priority": 0}, "must be >= 1"),
    ("default_priority", {"default_priority": 2}, "must be between 1 and priority_levels"),
    ("default_timeout_s", {"default_timeout_s": 0.0}, "must be positive or None"),
    ("max_batches_in_flight", {"max_batches_in_flight": 0}, "must be >= 1"),
    ("preferred_batch_sizes", {"preferred_batch_sizes": (0,)}, "must each be between 1 and max_batch_size"),
    ("preferred_batch_sizes", {"max_batch_size": 1, "preferred_batch_sizes": (2,)}, "must each be"),
]


@pytest.mark.parametrize(("name", "fields", "rule"), BAD)
def test_a_bad_policy_names_its_field_and_rule(name: str, fields: dict[str, Any], rule: str) -> None:
    with pytest.raises(ValueError, match=rf"^BatchingPolicy\.{name} {rule}"):
        validate_policy(BatchingPolicy(**{"max_batch_size": 8, **fields}))


def test_policy_limits_are_inclusive() -> None:
    validate_policy(BatchingPolicy(max_batch_size=4, max_queue_size=1, preferred_batch_sizes=(1, 4)))
    validate_policy(BatchingPolicy(max_batch_size=0, preferred_batch_sizes=(1,), default_timeout_s=0.5))


def test_timeout_action_must_be_the_enum() -> None:
    bad = dataclasses.replace(BatchingPolicy(max_batch_size=8), timeout_action="reject")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"timeout_action must be a TimeoutAction, got 'reject'"):
        validate_policy(bad)
