"""Formation rules pinned where mutation testing (scripts/mutation.sh) found them untested:
boundaries at equality, the walk's earliest deadline, and the prediction memo."""

from __future__ import annotations

from typing import Any

import numpy as np

from batcher.form import Pending, cannot_finish, form_batch, target_rows
from batcher.types import BatchingPolicy, TimeoutAction


def req(
    seq: int,
    *,
    hard: float | None = None,
    policy_deadline: float | None = None,
    reject_at: float | None = None,
) -> Pending[int]:
    return Pending(
        inputs={"x": np.zeros((1, 2), np.float32)},
        rows=1,
        priority=1,
        arrival=0.0,
        seq=seq,
        handle=seq,
        hard=hard,
        policy_deadline=policy_deadline,
        reject_at=reject_at,
    )


def policy(**kw: Any) -> BatchingPolicy:
    return BatchingPolicy(**{"max_batch_size": 8, **kw})


def test_a_deadline_reached_now_cannot_be_met_even_by_a_free_run() -> None:
    assert cannot_finish(5.0, 5.0, 0.0)
    assert not cannot_finish(5.0, 4.0, 1.0)  # ends exactly at the deadline: in time


def test_preferred_sizes_keep_one_and_ignore_zero() -> None:
    assert target_rows(policy(max_batch_size=4, preferred_batch_sizes=(1,))) == 1
    assert target_rows(policy(max_batch_size=4, preferred_batch_sizes=(0,))) == 4


def test_a_request_at_its_policy_deadline_is_already_late_with_delay() -> None:
    late, fresh = req(0, policy_deadline=1.0), req(1)
    f = form_batch(
        [late, fresh], 1.0, policy(max_batch_size=1, timeout_action=TimeoutAction.DELAY), lambda r: 0.0
    )
    assert [p.handle for p in f.batch] == [1]


def test_a_joining_request_whose_own_deadline_the_batch_would_miss_waits() -> None:
    # Runs of 1 row take 0.01 s, of 2 rows 0.05 s. The second request alone makes its deadline,
    # but not inside a batch of two: the batch is cut before it.
    predict = {1: 0.01, 2: 0.05, 3: 0.05}.__getitem__
    f = form_batch([req(0, hard=1.0), req(1, hard=0.03)], 0.0, policy(), predict)
    assert [p.handle for p in f.batch] == [0]


def test_the_earliest_deadline_in_the_batch_is_kept_while_it_grows() -> None:
    predict = {1: 0.01, 2: 0.02, 3: 0.05}.__getitem__
    f = form_batch([req(0, hard=0.03), req(1), req(2)], 0.0, policy(), predict)
    assert [p.handle for p in f.batch] == [0, 1]  # a third row would make #0 late


def test_a_short_delay_exceeded_runs_past_the_mark() -> None:
    # Preferred size 2 marks the first two; the delay (0.5 s) is exceeded, so all three run.
    queue = [req(0), req(1), req(2)]
    f = form_batch(queue, 0.6, policy(preferred_batch_sizes=(2,), max_queue_delay_s=0.5), lambda r: 0.0)
    assert [p.handle for p in f.batch] == [0, 1, 2]


def test_each_batch_size_is_predicted_once() -> None:
    calls: list[int] = []

    def predict(rows: int) -> float:
        calls.append(rows)
        return 0.0

    form_batch([req(i, hard=10.0) for i in range(4)], 0.0, policy(), predict)
    assert sorted(calls) == [1, 2, 3, 4]
