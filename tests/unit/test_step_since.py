"""A later step of an ensemble request admitted whole (Admission.since): formation takes it before
work its queue took after that admission, and its queue does not shed it again (its ensemble's
admission forecast it), while what its deadline cannot meet is still refused."""

from __future__ import annotations

import numpy as np
import pytest

from batcher.admission import Admission
from batcher.errors import DeadlineExceeded, Overloaded
from batcher.form import Pending, form_batch
from batcher.queue import RequestQueue
from batcher.types import BatchingPolicy


def _pending(seq: int, since: float, priority: int = 2) -> Pending[str]:
    x = np.zeros((1, 2), np.float32)
    return Pending(
        inputs={"x": x}, rows=1, priority=priority, arrival=0.0, seq=seq, handle=f"r{seq}", since=since
    )


def test_formation_takes_the_earliest_since_first_within_a_priority() -> None:
    policy = BatchingPolicy(max_batch_size=1, priority_levels=2)
    queued = [
        _pending(0, since=5.0),
        _pending(1, since=6.0),
        _pending(2, since=1.0),
        _pending(3, since=9.0),
    ]
    assert form_batch(queued, 10.0, policy, lambda rows: 0.0).batch[0].handle == "r2"
    higher = [*queued, _pending(4, since=9.5, priority=1)]  # a higher level still goes first
    assert form_batch(higher, 10.0, policy, lambda rows: 0.0).batch[0].handle == "r4"
    same = [_pending(7, since=3.0), _pending(6, since=3.0)]  # equal: by arrival number
    assert form_batch(same, 10.0, policy, lambda rows: 0.0).batch[0].handle == "r6"


def _admission(since: float | None) -> Admission:
    return Admission(
        rows=1, priority=1, arrival=0.0, deadline=1.0, policy_deadline=None, hard=1.0, since=since
    )


def test_a_step_admitted_with_its_ensemble_is_not_shed_again_but_still_checked_for_its_deadline() -> None:
    queue = RequestQueue(BatchingPolicy(max_batch_size=4), clock=lambda: 0.0)
    behind = lambda level, rows, slack: 5.0  # noqa: E731 (the work ahead would end long after the deadline)
    with pytest.raises(Overloaded):
        queue.check(_admission(None), lambda rows: 0.1, behind)
    queue.check(_admission(0.0), lambda rows: 0.1, behind)
    with pytest.raises(DeadlineExceeded, match="deadline cannot be met"):
        queue.check(_admission(0.0), lambda rows: 2.0, behind)
