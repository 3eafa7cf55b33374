"""Properties of batch formation (batcher/form.py) and gather/scatter (batcher/scatter.py).

Formation: every queued request is filed once (batch, expired, cancelled or left queued); a batch
keeps within max_batch_size, takes a prefix of the queue in (late, priority, arrival) order, so
arrival order within a priority is kept, never holds an expired or cancelled request, and cuts at
preferred sizes as tests/unit/test_batcher_form.py's Triton cases do. Scatter: rows in = rows out,
and each request gets exactly its own rows back, in order.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from batcher.form import Formation, Pending, cannot_finish, form_batch, target_rows
from batcher.scatter import gather, offsets_of, scatter
from batcher.types import Array, BatchingPolicy, Tensors, TimeoutAction
from server import datatypes
from tests.support.request_strategies import WIRE_NAMES, arrays_of

Queue = list[Pending[int]]

# --- strategies -----------------------------------------------------------------------------------


@st.composite
def policies(draw: st.DrawFn, simple: bool = False) -> BatchingPolicy:
    mbs = draw(st.integers(1, 8) if simple else st.integers(0, 8))
    return BatchingPolicy(
        max_batch_size=mbs,
        preferred_batch_sizes=tuple(draw(st.sets(st.integers(1, max(mbs, 1)), max_size=3))),
        max_queue_delay_s=draw(st.sampled_from([0.0, 1.0])),
        idle_dispatch=draw(st.booleans()),
        priority_levels=3,
        timeout_action=TimeoutAction.REJECT if simple else draw(st.sampled_from(list(TimeoutAction))),
    )


# A coarse grid of times: arrivals, deadlines and `now` often meet (the boundaries are the rules).
TIMES = st.sampled_from([0.0, 0.5, 1.0, 1.05, 1.5, 2.0, 3.0])


@st.composite
def queues(draw: st.DrawFn, policy: BatchingPolicy, simple: bool = False) -> Queue:
    """Requests as the batcher queues them: unique arrival numbers, in arrival order."""
    queue: Queue = []
    for seq in range(draw(st.integers(0, 8))):
        rows = draw(st.integers(1, max(policy.max_batch_size, 1)))
        width = 3 if simple else draw(st.sampled_from([3, 3, 3, 5]))  # another shape: cannot join
        queue.append(
            Pending(
                inputs={"x": np.zeros((rows, width), np.float32)},
                rows=rows,
                priority=draw(st.integers(1, 3)),
                arrival=draw(TIMES),
                seq=seq,
                handle=seq,
                hard=None if simple else draw(st.none() | TIMES),
                policy_deadline=None if simple else draw(st.none() | TIMES),
            )
        )
    return queue


Predict = Callable[[int], float]


def linear(per_row: float) -> Predict:
    return lambda rows: per_row * rows


# --- form_batch -----------------------------------------------------------------------------------


def batching_order(live: Sequence[Pending[int]], now: float, policy: BatchingPolicy) -> list[Pending[int]]:
    """Priority 1 first, within a priority the late (DELAY only) last, then arrival: the documented
    order (batcher/form.py rule 2)."""

    def late(p: Pending[int]) -> bool:
        return (
            policy.timeout_action is TimeoutAction.DELAY
            and p.policy_deadline is not None
            and p.policy_deadline <= now
        )

    return sorted(live, key=lambda p: (p.priority, late(p), p.seq))


def rows_of(batch: Sequence[Pending[int]]) -> int:
    return sum(p.rows for p in batch)


@given(
    case=policies().flatmap(lambda pol: st.tuples(st.just(pol), queues(pol))),
    now=TIMES,
    per_row=st.sampled_from([0.0, 0.05, 0.3]),
    cancelled=st.sets(st.integers(0, 7)),
)
def test_formation_files_every_request_once_and_keeps_the_rules(
    case: tuple[BatchingPolicy, Queue], now: float, per_row: float, cancelled: set[int]
) -> None:
    policy, queue = case
    predict = linear(per_row)
    f: Formation[int] = form_batch(queue, now, policy, predict, lambda p: p.handle in cancelled)
    filed = [*f.batch, *f.expired, *f.cancelled]
    assert len({id(p) for p in filed}) == len(filed)  # each request filed at most once
    assert {id(p) for p in filed} <= {id(p) for p in queue}
    assert f.cancelled == [p for p in queue if p.handle in cancelled]
    live = [p for p in queue if p.handle not in cancelled]
    assert f.expired == [p for p in live if cannot_finish(p.hard, now, predict(p.rows))]
    live = [p for p in live if p not in f.expired]
    # A prefix of the batching order: priority first, arrival order within a priority, no skipping.
    assert f.batch == batching_order(live, now, policy)[: len(f.batch)]
    if policy.max_batch_size == 0:
        assert len(f.batch) <= 1
    else:
        assert rows_of(f.batch) <= policy.max_batch_size
        assert len({p.key for p in f.batch}) <= 1  # one shape: the arrays concatenate
    if len(f.batch) > 1:  # the whole batch can still meet its earliest deadline
        hards = [p.hard for p in f.batch if p.hard is not None]
        assert not cannot_finish(min(hards, default=None), now, predict(rows_of(f.batch)))
    if not live:
        assert f.batch == [] and f.wait_until is None
    else:
        assert (f.wait_until is None) == bool(f.batch)
    if f.wait_until is not None:
        assert now < f.wait_until <= max(p.arrival for p in live) + policy.max_queue_delay_s


def expected_batch(live: Queue, now: float, policy: BatchingPolicy) -> tuple[int, float | None]:
    """Requests to run and when to look again, for one shape, no deadlines and a 0 s predictor,
    stated in sizes (the rules of tests/unit/test_batcher_form.py's Triton cases)."""
    cum = list(itertools.accumulate(p.rows for p in live))
    top = target_rows(policy)
    fits = max(1, sum(1 for c in cum if c <= policy.max_batch_size))  # the walk stops at a misfit
    oldest = min(p.arrival for p in live[:fits])
    delay = 0.0 if policy.idle_dispatch else policy.max_queue_delay_s
    if delay > 0 and now >= oldest + delay:
        return fits, None  # waited long enough: everything that fits
    preferred = [k + 1 for k, c in enumerate(cum) if c in policy.preferred_batch_sizes]
    if preferred:
        return max(preferred), None  # the largest preferred size reached
    if cum[-1] > top:  # past max_preferred: what comes before it, at least one request
        return max(1, sum(1 for c in cum if c <= top)), None
    if delay == 0 or cum[-1] == top:
        return len(live), None
    return 0, oldest + delay


@given(
    case=policies(simple=True).flatmap(lambda pol: st.tuples(st.just(pol), queues(pol, simple=True))),
    now=TIMES,
)
def test_formation_cuts_at_preferred_sizes(case: tuple[BatchingPolicy, Queue], now: float) -> None:
    policy, queue = case
    f = form_batch(queue, now, policy, linear(0.0))
    if not queue:
        assert f.batch == [] and f.wait_until is None
        return
    live = batching_order(queue, now, policy)
    count, wait_until = expected_batch(live, now, policy)
    assert f.batch == live[:count]
    assert f.wait_until == wait_until
    assert f.expired == [] and f.cancelled == []


# --- gather / scatter -----------------------------------------------------------------------------


@st.composite
def batches(draw: st.DrawFn) -> tuple[list[Tensors], list[int]]:
    """Requests with the same input names, dtypes and inner dimensions, and their row counts."""
    layout = draw(
        st.dictionaries(
            st.sampled_from(["a", "b", "c"]),
            st.tuples(st.sampled_from(WIRE_NAMES), st.lists(st.integers(0, 3), max_size=2)),
            min_size=1,
        )
    )
    rows = draw(st.lists(st.integers(1, 4), min_size=1, max_size=5))
    requests: list[Tensors] = []
    for n in rows:
        requests.append(
            {
                name: draw(arrays_of(datatypes.BY_WIRE[wire], (n, *inner)))
                for name, (wire, inner) in layout.items()
            }
        )
    return requests, rows


def same(a: Array, b: Array) -> bool:
    if a.dtype.kind == "O":
        return a.shape == b.shape and a.tolist() == b.tolist()
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@given(case=batches())
def test_gather_then_scatter_gives_each_request_exactly_its_rows_in_order(
    case: tuple[list[Tensors], list[int]],
) -> None:
    requests, rows = case
    inputs, offsets = gather(requests, rows)
    assert offsets == offsets_of(rows) and offsets[-1] == sum(rows)
    assert all(array.shape[0] == sum(rows) for array in inputs.values())  # rows in
    parts = scatter(inputs, offsets)  # an identity "backend": outputs are the inputs
    assert len(parts) == len(requests)
    assert sum(next(iter(part.values())).shape[0] for part in parts) == sum(rows)  # rows out
    for request, part, n in zip(requests, parts, rows, strict=True):
        assert set(part) == set(request)
        for name, array in request.items():
            assert part[name].shape[0] == n
            assert same(part[name], array)


@given(
    rows=st.lists(st.integers(0, 4), min_size=1, max_size=5),
    sizes=st.lists(st.integers(0, 20), min_size=1, max_size=3),
)
def test_scatter_splits_by_offsets_or_refuses_outputs_of_other_sizes(
    rows: list[int], sizes: list[int]
) -> None:
    offsets = offsets_of(rows)
    outputs = {f"y{i}": np.arange(size * 2).reshape(size, 2) for i, size in enumerate(sizes)}
    if any(size != offsets[-1] for size in sizes):
        with pytest.raises(ValueError, match="for a batch of"):
            scatter(outputs, offsets)
        return
    parts = scatter(outputs, offsets)
    assert [part["y0"].shape[0] for part in parts] == rows
    for name, array in outputs.items():
        assert np.concatenate([part[name] for part in parts]).tolist() == array.tolist()


@given(
    rows=st.lists(st.integers(0, 3), min_size=1, max_size=4),
    claimed=st.lists(st.integers(0, 3), min_size=1, max_size=4),
    names=st.lists(st.sampled_from(["x", "y"]), min_size=1, max_size=4),
)
def test_gather_refuses_requests_that_disagree_with_their_rows_or_names(
    rows: list[int], claimed: list[int], names: list[str]
) -> None:
    requests: list[Tensors] = [
        {names[i % len(names)]: np.zeros((n, 2), np.float32)} for i, n in enumerate(rows)
    ]
    agree = rows == claimed and len(set(names[: len(rows)])) == 1
    if not agree:
        with pytest.raises(ValueError):
            gather(requests, claimed)
        return
    inputs, offsets = gather(requests, claimed)
    assert offsets[-1] == sum(rows) == next(iter(inputs.values())).shape[0]
