"""Batch formation rules, with plain numbers for time: no event loop, no clock."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest

from batcher.form import Formation, Pending, form_batch, runs_alone_now, target_rows
from batcher.types import BatchingPolicy, TimeoutAction


def req(
    seq: int,
    rows: int = 1,
    *,
    priority: int = 1,
    arrival: float = 0.0,
    hard: float | None = None,
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
        hard=hard,
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
    # Triton's rules give the same: the walk marks the last preferred size it hits, and with no
    # delay a mark cuts the batch (5 rows fit max_batch_size 8, yet 4 run).
    q = [req(i) for i in range(available)]
    f = form(q, preferred_batch_sizes=(2, 4))
    assert sum(p.rows for p in f.batch) == expected_rows
    assert ids(f.batch) == [f"r{i}" for i in range(expected_rows)]  # a prefix: order kept


def test_preferred_cut_with_multi_row_requests() -> None:
    assert ids(form([req(0, 3), req(1, 3)], preferred_batch_sizes=(4,)).batch) == ["r0"]
    # A request at or past the largest preferred size is a full batch by itself.
    assert ids(form([req(0, 5), req(1, 1)], preferred_batch_sizes=(4,)).batch) == ["r0"]
    # Triton's rules: no preferred size is hit exactly and 4 rows stay within max_preferred 8, so
    # with no delay everything pending goes. (The old rule spoke of "reaching" size 2.)
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
    q = [req(0, arrival=0.0), req(1, arrival=0.0, hard=0.5)]
    f = form(q, now=0.0, predict=lambda rows: 0.2, max_queue_delay_s=1.0)
    assert f.batch == [] and f.wait_until == pytest.approx(0.3)
    assert ids(form(q, now=0.3, predict=lambda rows: 0.2, max_queue_delay_s=1.0).batch) == ["r0", "r1"]


def test_batch_that_cannot_grow_goes_at_once_despite_delay() -> None:
    f = form([req(0, 3), req(1, 2)], max_batch_size=4, max_queue_delay_s=1.0)
    assert ids(f.batch) == ["r0"] and f.wait_until is None


def test_expired_and_hopeless_requests_are_dropped_never_batched() -> None:
    q = [
        req(0, hard=0.9),  # passed
        req(1, hard=1.0),  # exactly now: passed
        req(2, hard=1.05),  # 50 ms left, 100 ms of compute: cannot make it
        req(3, hard=2.0),
        req(4),
    ]
    f = form(q, now=1.0, predict=lambda rows: 0.1 * rows)
    assert ids(f.expired) == ["r0", "r1", "r2"]
    assert ids(f.batch) == ["r3", "r4"]


def test_batch_stops_growing_before_it_would_miss_a_deadline() -> None:
    # r0 alone (0.1 s) meets its deadline; with r1's 2 rows (0.3 s) it would not.
    q = [req(0, hard=0.25), req(1, 2)]
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


def test_delay_action_demotes_late_requests_behind_the_in_time_ones_of_their_level_only() -> None:
    # As Triton's PriorityQueue: level by level, each level's delayed requests after its others. The
    # late r0 had gone behind the lower level's r2 too (["r1", "r2", "r0"]).
    q = [req(0, policy_deadline=0.5), req(1, policy_deadline=2.0), req(2, priority=2, policy_deadline=2.0)]
    f = form(q, now=1.0, timeout_action=TimeoutAction.DELAY, priority_levels=2)
    assert f.expired == []
    assert ids(f.batch) == ["r1", "r0", "r2"]
    one = form(q, now=1.0, timeout_action=TimeoutAction.DELAY, priority_levels=2, max_batch_size=1)
    assert ids(one.batch) == ["r1"]
    alone = form(
        [q[0], q[2]], now=1.0, timeout_action=TimeoutAction.DELAY, priority_levels=2, max_batch_size=1
    )
    assert ids(alone.batch) == ["r0"]  # late, but ahead of every lower level


def test_delay_action_still_drops_past_hard_deadline() -> None:
    q = [req(0, policy_deadline=0.5, hard=0.8), req(1)]
    f = form(q, now=1.0, timeout_action=TimeoutAction.DELAY)
    assert ids(f.expired) == ["r0"] and ids(f.batch) == ["r1"]


def test_reject_action_expires_past_policy_timeout() -> None:
    # With REJECT, admission folds the policy timeout into `hard`; formation reads only `hard`.
    q = [req(0, hard=0.5, policy_deadline=0.5), req(1, hard=2.0, policy_deadline=2.0)]
    f = form(q, now=1.0, timeout_action=TimeoutAction.REJECT)
    assert ids(f.expired) == ["r0"] and ids(f.batch) == ["r1"]


# -- Triton's dynamic batcher rules (qa/L0_batcher) -----------------------------------------------

TRITON: dict[str, Any] = {"preferred_batch_sizes": (2, 6), "max_queue_delay_s": 10.0}


def tenth(rows: int) -> float:
    """A predictor that grows with rows, so a rule that asks the wrong size shows."""
    return 0.1 * rows


def test_lone_request_of_a_preferred_size_runs_at_once() -> None:
    f = form([req(0, 2)], **TRITON)
    assert ids(f.batch) == ["r0"] and f.wait_until is None


def test_requests_short_of_a_preferred_size_wait_then_run_as_one_batch() -> None:
    assert form([req(0, 1)], **TRITON).wait_until == pytest.approx(10.0)
    q = [req(0, 1, arrival=0.0), req(1, 3, arrival=1.0)]
    waiting = form(q, now=1.0, **TRITON)
    assert waiting.batch == [] and waiting.wait_until == pytest.approx(10.0)
    assert ids(form(q, now=10.0, **TRITON).batch) == ["r0", "r1"]  # one batch of 4, not {1},{3}


def test_smaller_preferred_size_runs_at_once_with_more_queued() -> None:
    # Rows 1, 2 (preferred: marked), 5, 8: the walk goes past max_preferred 6, the mark wins.
    q = [req(0), req(1), req(2, 3), req(3, 3)]
    assert ids(form(q, **TRITON).batch) == ["r0", "r1"]


def test_prefix_before_passing_max_preferred_runs_at_once() -> None:
    # Rows 1, 5 (no preferred size), then 8 > 6: the 5 rows before it are marked and run now.
    q = [req(0), req(1, 4), req(2, 3)]
    f = form(q, **TRITON)
    assert ids(f.batch) == ["r0", "r1"] and f.wait_until is None


def test_delay_exceeded_runs_everything_up_to_max_batch_size_past_a_mark() -> None:
    q = [req(0), req(1), req(2, 3), req(3, 3)]
    assert ids(form(q, now=10.0, **TRITON).batch) == ["r0", "r1", "r2", "r3"]  # 8 rows
    q = [req(0), req(1, 4), req(2, 3), req(3, 2)]  # r3 would make 10 > max_batch_size 8
    assert ids(form(q, now=10.0, **TRITON).batch) == ["r0", "r1", "r2"]


def test_delay_counts_from_the_oldest_request_in_the_batch() -> None:
    q = [req(0, arrival=3.0), req(1, 2, arrival=5.0)]  # 3 rows: no preferred size
    assert form(q, now=12.0, **TRITON).wait_until == pytest.approx(13.0)
    assert ids(form(q, now=13.0, **TRITON).batch) == ["r0", "r1"]


def test_idle_dispatch_runs_a_lone_request_at_once_despite_delay() -> None:
    f = form([req(0)], idle_dispatch=True, **TRITON)
    assert ids(f.batch) == ["r0"] and f.wait_until is None


def test_idle_dispatch_still_cuts_at_a_mark() -> None:
    assert ids(form([req(0), req(1), req(2)], idle_dispatch=True, **TRITON).batch) == ["r0", "r1"]
    assert ids(form([req(0), req(1, 4)], idle_dispatch=True, **TRITON).batch) == ["r0", "r1"]


def test_wait_ends_early_enough_for_the_next_preferred_size_to_run() -> None:
    # Hard deadline 1.0; the next preferred size above 1 row is 2, predicted 0.2 s: wake at 0.8.
    q = [req(0, hard=1.0)]
    f = form(q, predict=tenth, **TRITON)
    assert f.batch == [] and f.wait_until == pytest.approx(0.8)
    assert ids(form(q, now=0.8, predict=tenth, **TRITON).batch) == ["r0"]
    # 3 rows: the next preferred size is 6, predicted 0.6 s.
    assert form([req(0, 3, hard=1.0)], predict=tenth, **TRITON).wait_until == pytest.approx(0.4)
    # No preferred sizes: the next target is max_batch_size 8, predicted 0.8 s.
    f = form(q, predict=tenth, max_queue_delay_s=10.0)
    assert f.wait_until == pytest.approx(0.2)


def test_no_slack_left_to_wait_runs_at_once() -> None:
    f = form([req(0, arrival=0.0, hard=0.5)], now=0.35, predict=tenth, **TRITON)  # wake 0.3 < now
    assert ids(f.batch) == ["r0"] and f.wait_until is None


def test_unbatched_model_runs_one_request_at_once_despite_delay() -> None:
    q = [req(0, hard=0.5), req(1, hard=5.0), req(2)]
    f = form(q, now=1.0, predict=tenth, max_batch_size=0, max_queue_delay_s=10.0)
    assert ids(f.expired) == ["r0"] and ids(f.batch) == ["r1"] and f.wait_until is None


def test_priority_orders_the_walk_to_a_preferred_size() -> None:
    q = [req(0, priority=2), req(1, priority=1), req(2, priority=1)]
    assert ids(form(q, priority_levels=2, **TRITON).batch) == ["r1", "r2"]


def test_expired_requests_never_batched_nor_counted_in_the_wait() -> None:
    q = [req(0, arrival=0.0, hard=0.5), req(1, arrival=0.5)]
    f = form(q, now=1.0, **TRITON)
    assert ids(f.expired) == ["r0"] and f.batch == []
    assert f.wait_until == pytest.approx(10.5)  # from r1's arrival: r0 is gone
    f = form(q, now=10.5, **TRITON)
    assert ids(f.expired) == ["r0"] and ids(f.batch) == ["r1"]


def test_deadline_stop_sends_at_once_even_with_delay() -> None:
    # r1 joining would make 3 rows (0.3 s), past r0's deadline: the walk stops, nothing to wait for.
    q = [req(0, hard=0.25), req(1, 2)]
    f = form(q, predict=tenth, **TRITON)
    assert ids(f.batch) == ["r0"] and f.wait_until is None


POLICIES = [
    BatchingPolicy(
        max_batch_size=mbs, preferred_batch_sizes=pref, max_queue_delay_s=delay, idle_dispatch=idle
    )
    for mbs in (0, 1, 4, 8)
    for pref in ((), (2,), (2, 6), (4, 8))
    for delay in (0.0, 10.0)
    for idle in (False, True)
]


@pytest.mark.parametrize("policy", POLICIES, ids=repr)
def test_runs_alone_now_agrees_with_form_batch(policy: BatchingPolicy) -> None:
    for rows in range(1, max(policy.max_batch_size, 1) + 1):
        f = form_batch([req(0, rows, arrival=2.0)], 2.0, policy, tenth)
        assert runs_alone_now(rows, policy) == bool(f.batch), rows
        assert (f.wait_until is None) == bool(f.batch)


def test_runs_alone_now_cases() -> None:
    triton = BatchingPolicy(max_batch_size=8, **TRITON)
    assert runs_alone_now(2, triton) and runs_alone_now(6, triton) and runs_alone_now(7, triton)
    assert not runs_alone_now(1, triton) and not runs_alone_now(3, triton)
    assert runs_alone_now(1, BatchingPolicy(max_batch_size=8, **TRITON, idle_dispatch=True))
    assert runs_alone_now(1, BatchingPolicy(max_batch_size=8))
    assert runs_alone_now(1, BatchingPolicy(max_batch_size=0, max_queue_delay_s=10.0))
