"""batcher/form.py: survivors of the 2026-12-05 mutation run (s48), pinned at their boundaries:
a backlog that holds a preferred size exactly, a model of one row whose only preferred size is 1,
and a queue-policy REJECT timeout reached exactly now."""

from __future__ import annotations

from batcher.form import alone_reason, backlog_rows, form_batch
from tests.unit.test_mutants_form import policy, req


def free(rows: int) -> float:
    return 0.0


def test_a_backlog_holding_a_preferred_size_exactly_runs_that_size() -> None:
    """2 queued rows with preferred sizes 1, 2 and 4: the first batch is the 2 it holds (a preferred
    size), not 1. Counting only sizes below the backlog (`s < rows`) forecast a batch of 1."""
    p = policy(preferred_batch_sizes=(1, 2, 4))
    assert backlog_rows(2, p) == 2
    assert backlog_rows(3, p) == 2  # between preferred sizes: the largest it holds
    f = form_batch([req(0), req(1)], 0.0, p, free)
    assert len(f.batch) == backlog_rows(2, p)  # the forecast is what formation runs


def test_a_one_row_model_with_preferred_size_one_runs_its_request_as_preferred() -> None:
    """max_batch_size 1 with preferred_batch_sizes (1,): one row is a preferred size, so the lone
    request runs "preferred", on the fast path (`alone_reason`) and in formation alike. Treating
    max_batch_size 1 as the no-batch-dimension case (`== 1` for `== 0`) said "full" in both."""
    p = policy(max_batch_size=1, preferred_batch_sizes=(1,))
    assert alone_reason(1, p) == "preferred"
    f = form_batch([req(0), req(1)], 0.0, p, free)
    assert ([q.handle for q in f.batch], f.reason) == ([0], "preferred")


def test_without_preferred_sizes_a_one_row_model_runs_full() -> None:
    """The same model without preferred sizes: "full" both ways (the case the mutants agree on)."""
    p = policy(max_batch_size=1)
    assert alone_reason(1, p) == "full"
    assert form_batch([req(0)], 0.0, p, free).reason == "full"


def test_a_request_at_its_reject_time_is_dropped_not_batched() -> None:
    """A queue-policy REJECT timeout reached exactly now: the request is expired (the queue's timer
    fails it at that time too); `reject_at < now` would still have run it."""
    f = form_batch([req(0, reject_at=5.0), req(1, reject_at=5.5)], 5.0, policy(), free)
    assert [q.handle for q in f.expired] == [0]
    assert [q.handle for q in f.batch] == [1]
