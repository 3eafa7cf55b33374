"""Batch formation rules, with plain numbers for time: no event loop, no clock."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest

from batcher.form import Formation, Pending, form_batch, hard_deadline, target_rows
from batcher.types import BatchingPolicy, TimeoutAction


def req(
    seq: int,
    rows: int = 1,
    *,
    priority: int = 1,
    arrival: float = 0.0,
    deadline: float | None = None,
    policy_deadline: float | None = None,
    width: int = 3,
) -> Pending[str]:
    return Pending(
        inputs={"x": np.zeros((rows, width), np.float32)},
        rows=rows,
        priority=priority,
        arrival=arrival,
        seq=seq,
        handle=f"r{seq}",
        deadline=deadline,
        policy_deadline=policy_deadline,
    )


def ids(ps: Sequence[Pending[str]]) -> list[str]:
    return [p.handle for p in ps]


def zero(rows: int) -> float:
    return 0.0


def form(
    queue: Sequence[Pending[str]],
    now: float = 0.0,
    predict: Callable[[int], float] = zero,
    **policy: Any,
) -> Formation[str]:
    """form_batch under a policy of max_batch_size 8 unless told otherwise."""
    return form_batch(queue, now, BatchingPolicy(**{"max_batch_size": 8, **policy}), predict)


def test_empty_queue_waits_for_arrivals_without_timer() -> None:
    f = form([])
    assert f.batch == [] and f.expired == [] and f.cancelled == []
    assert f.wait_until is None


def test_priority_first_then_fifo_within_a_level() -> None:
    q = [req(0, priority=2), req(1, priority=1), req(2, priority=2), req(3, priority=1)]
    f = form(q, priority_levels=2)
    assert ids(f.batch) == ["r1", "r3", "r0", "r2"]


def test_row_budget_stops_at_first_request_that_does_not_fit() -> None:
    # r2 (2 rows) does not fit after 3 rows; r3 would, but must not jump past r2.
    q = [req(0, 2), req(1, 1), req(2, 2), req(3, 1)]
    f = form(q, max_batch_size=4)
    assert ids(f.batch) == ["r0", "r1"]
    assert f.expired == [] and f.wait_until is None


def test_unbatched_model_runs_exactly_one_request() -> None:
    f = form([req(0), req(1), req(2)], max_batch_size=0, max_queue_delay_s=1.0)
    assert ids(f.batch) == ["r0"]


@pytest.mark.parametrize(
    ("available", "expected_rows"),
    [(5, 4), (4, 4), (3, 2), (2, 2), (1, 1)],
)
def test_preferred_sizes_cut_at_largest_reached(available: int, expected_rows: int) -> None:
    q = [req(i) for i in range(available)]
    f = form(q, preferred_batch_sizes=(2, 4))
    assert sum(p.rows for p in f.batch) == expected_rows
    assert ids(f.batch) == [f"r{i}" for i in range(expected_rows)]  # a prefix: order kept


def test_preferred_cut_with_multi_row_requests() -> None:
    assert ids(form([req(0, 3), req(1, 3)], preferred_batch_sizes=(4,)).batch) == ["r0"]
    # A request at or past the largest preferred size is a full batch by itself.
    assert ids(form([req(0, 5), req(1, 1)], preferred_batch_sizes=(4,)).batch) == ["r0"]
    # 4 rows reach preferred size 2 but no prefix lands within it: take all rather than nothing.
    assert ids(form([req(0, 3), req(1, 1)], preferred_batch_sizes=(2, 8)).batch) == ["r0", "r1"]


def test_target_rows() -> None:
    assert target_rows(BatchingPolicy(max_batch_size=8)) == 8
    assert target_rows(BatchingPolicy(max_batch_size=8, preferred_batch_sizes=(2, 4))) == 4


def test_no_delay_dispatches_at_once() -> None:
    f = form([req(0)], now=0.0)
    assert ids(f.batch) == ["r0"] and f.wait_until is None


def test_full_batch_dispatches_at_once_despite_delay() -> None:
    f = form([req(i) for i in range(4)], max_batch_size=4, max_queue_delay_s=1.0)
    assert len(f.batch) == 4 and f.wait_until is None


def test_largest_preferred_size_counts_as_full() -> None:
    pol: dict[str, Any] = {"preferred_batch_sizes": (4,), "max_queue_delay_s": 1.0}
    assert len(form([req(i) for i in range(4)], **pol).batch) == 4
    waiting = form([req(i) for i in range(3)], **pol)
    assert waiting.batch == [] and waiting.wait_until == pytest.approx(1.0)


def test_partial_batch_waits_for_oldest_delay_then_goes() -> None:
    q = [req(0, arrival=0.0), req(1, arrival=0.05)]
    waiting = form(q, now=0.1, max_queue_delay_s=1.0)
    assert waiting.batch == [] and waiting.expired == []
    assert waiting.wait_until == pytest.approx(1.0)
    assert ids(form(q, now=1.0, max_queue_delay_s=1.0).batch) == ["r0", "r1"]
    assert ids(form(q, now=5.0, max_queue_delay_s=1.0).batch) == ["r0", "r1"]


def test_delay_is_bounded_by_slack_of_earliest_deadline() -> None:
    q = [req(0, arrival=0.0), req(1, arrival=0.0, deadline=0.5)]
    f = form(q, now=0.0, predict=lambda rows: 0.2, max_queue_delay_s=1.0)
    assert f.batch == [] and f.wait_until == pytest.approx(0.3)
    assert ids(form(q, now=0.3, predict=lambda rows: 0.2, max_queue_delay_s=1.0).batch) == ["r0", "r1"]


def test_batch_that_cannot_grow_goes_at_once_despite_delay() -> None:
    f = form([req(0, 3), req(1, 2)], max_batch_size=4, max_queue_delay_s=1.0)
    assert ids(f.batch) == ["r0"] and f.wait_until is None


def test_expired_and_hopeless_requests_are_dropped_never_batched() -> None:
    q = [
        req(0, deadline=0.9),  # passed
        req(1, deadline=1.0),  # exactly now: passed
        req(2, deadline=1.05),  # 50 ms left, 100 ms of compute: cannot make it
        req(3, deadline=2.0),
        req(4),
    ]
    f = form(q, now=1.0, predict=lambda rows: 0.1 * rows)
    assert ids(f.expired) == ["r0", "r1", "r2"]
    assert ids(f.batch) == ["r3", "r4"]


def test_batch_stops_growing_before_it_would_miss_a_deadline() -> None:
    # r0 alone (0.1 s) meets its deadline; with r1's 2 rows (0.3 s) it would not.
    q = [req(0, deadline=0.25), req(1, 2)]
    f = form(q, now=0.0, predict=lambda rows: 0.1 * rows, max_queue_delay_s=1.0)
    assert ids(f.batch) == ["r0"]
    assert f.expired == []  # r1 stays queued


def test_cancelled_are_skipped() -> None:
    q = [req(0), req(1), req(2)]
    pol = BatchingPolicy(max_batch_size=8)
    f = form_batch(q, 0.0, pol, zero, lambda p: p.handle == "r1")
    assert ids(f.cancelled) == ["r1"]
    assert ids(f.batch) == ["r0", "r2"]


def test_requests_of_other_shapes_are_not_batched_together() -> None:
    q = [req(0, width=3), req(1, width=5), req(2, width=3)]
    f = form(q, max_queue_delay_s=1.0)
    assert ids(f.batch) == ["r0"]  # stops at r1, dispatches now: it cannot grow


def test_delay_action_demotes_late_requests_behind_in_time_ones() -> None:
    q = [req(0, policy_deadline=0.5), req(1, policy_deadline=2.0), req(2, priority=2, policy_deadline=2.0)]
    f = form(q, now=1.0, timeout_action=TimeoutAction.DELAY, priority_levels=2)
    assert f.expired == []
    assert ids(f.batch) == ["r1", "r2", "r0"]
    one = form(q, now=1.0, timeout_action=TimeoutAction.DELAY, priority_levels=2, max_batch_size=1)
    assert ids(one.batch) == ["r1"]


def test_delay_action_still_drops_past_hard_deadline() -> None:
    q = [req(0, policy_deadline=0.5, deadline=0.8), req(1)]
    f = form(q, now=1.0, timeout_action=TimeoutAction.DELAY)
    assert ids(f.expired) == ["r0"] and ids(f.batch) == ["r1"]


def test_reject_action_expires_past_policy_timeout() -> None:
    q = [req(0, policy_deadline=0.5), req(1, policy_deadline=2.0)]
    f = form(q, now=1.0, timeout_action=TimeoutAction.REJECT)
    assert ids(f.expired) == ["r0"] and ids(f.batch) == ["r1"]


def test_hard_deadline_folds_policy_timeout_only_for_reject() -> None:
    p = req(0, deadline=3.0, policy_deadline=2.0)
    assert hard_deadline(p, BatchingPolicy(max_batch_size=1)) == 2.0
    assert hard_deadline(p, BatchingPolicy(max_batch_size=1, timeout_action=TimeoutAction.DELAY)) == 3.0
    assert hard_deadline(req(1, policy_deadline=2.0), BatchingPolicy(max_batch_size=1)) == 2.0
    assert hard_deadline(req(2), BatchingPolicy(max_batch_size=1)) is None
