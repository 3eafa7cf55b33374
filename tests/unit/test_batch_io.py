"""batcher/batch_io.py: a batch's inputs gathered from its requests, and each request's outcome set
from the run. DynamicBatcher's tests reach these through the queue; these pin them directly (the
mutation run of 2026-11-30 found them reached only by integration tests: tests/MUTANTS.md)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from batcher.batch_io import alone_rows, batch_inputs, computed_late, record_run, settle_batch, stopped
from batcher.errors import BatcherStopped, DeadlineExceeded
from batcher.form import Pending
from batcher.queue import Request, Ticket
from batcher.ragged import RaggedPlan
from batcher.stats import ModelStats
from batcher.types import BatchingPolicy, QueueTrace, Tensors

NS = (10, 20, 30, 40)


def request(
    inputs: Tensors, rows: int, seq: int, *, hard: float | None = None, trace: bool = False
) -> Request:
    future: asyncio.Future[Tensors] = asyncio.get_running_loop().create_future()
    ticket = Ticket(future, trace=QueueTrace() if trace else None)
    return Pending(inputs, rows, 1, 0.0, seq, ticket, hard=hard)


def features(rows: int, start: float = 0.0) -> Tensors:
    return {"x": np.arange(start, start + rows * 2, dtype=np.float32).reshape(rows, 2)}


def test_the_rows_of_a_request_run_alone() -> None:
    inputs = {"scalar": np.float32(3.0).reshape(()), "x": np.zeros((5, 2), np.float32)}
    assert alone_rows(inputs, BatchingPolicy(max_batch_size=0)) == 1  # no batch dimension
    assert alone_rows(inputs, BatchingPolicy(max_batch_size=0, alone_with_rows=True)) == 5
    scalars = {"s": np.float32(1.0).reshape(())}
    assert alone_rows(scalars, BatchingPolicy(max_batch_size=0, alone_with_rows=True)) == 1
    assert alone_rows({"m": np.zeros((3, 7), np.float32)}, BatchingPolicy(0, alone_with_rows=True)) == 3
    assert alone_rows({"v": np.zeros(6, np.float32)}, BatchingPolicy(0, alone_with_rows=True)) == 6


async def test_a_batched_model_gets_its_requests_concatenated_with_their_offsets() -> None:
    batch = [request(features(2), 2, 1), request(features(3, 100.0), 3, 2)]
    inputs, offsets = batch_inputs(batch, BatchingPolicy(max_batch_size=8))
    assert offsets == [0, 2, 5]
    np.testing.assert_array_equal(inputs["x"], np.concatenate([features(2)["x"], features(3, 100.0)["x"]]))


async def test_a_batch_of_one_row_at_most_still_goes_through_gather() -> None:
    # max_batch_size 1 batches (one request per run): its inputs are gathered (a new mapping,
    # checked against the request's rows), not passed through as a model without a batch dimension's.
    own = features(1)
    inputs, offsets = batch_inputs([request(own, 1, 1)], BatchingPolicy(max_batch_size=1))
    assert inputs is not own and inputs["x"] is own["x"] and offsets == [0, 1]


async def test_a_model_without_a_batch_dimension_runs_its_one_request_as_is() -> None:
    own = {"x": np.zeros((4, 2), np.float32)}
    inputs, offsets = batch_inputs([request(own, 1, 1)], BatchingPolicy(max_batch_size=0))
    assert inputs is own and offsets == [0, 1]
    counted = BatchingPolicy(max_batch_size=0, alone_with_rows=True)
    assert batch_inputs([request(own, 1, 1)], counted)[1] == [0, 4]


async def test_ragged_inputs_are_flattened_and_joined() -> None:
    plan = RaggedPlan(inputs=frozenset({"x"}))
    policy = BatchingPolicy(max_batch_size=8, ragged=plan)
    a = {"x": np.arange(3, dtype=np.float32).reshape(1, 3)}
    b = {"x": np.arange(10, 20, dtype=np.float32).reshape(2, 5)}
    inputs, offsets = batch_inputs([request(a, 1, 1), request(b, 2, 2)], policy)
    np.testing.assert_array_equal(inputs["x"], np.concatenate([a["x"].ravel(), b["x"].ravel()]))
    assert offsets == [0, 1, 3]


async def test_each_request_gets_its_part_a_late_one_deadline_exceeded_a_gone_one_nothing() -> None:
    stats = ModelStats()
    on_time = request(features(1), 1, 1, hard=10.0)
    late = request(features(1), 1, 2, hard=4.0)
    gone = request(features(1), 1, 3)
    gone.handle.future.cancel()
    no_deadline = request(features(1), 1, 4)
    parts = [{"y": np.full((1,), float(i), np.float32)} for i in range(4)]
    settle_batch([on_time, late, gone, no_deadline], parts, 4, 5.0, stats, NS)
    assert on_time.handle.future.result()["y"][0] == 0.0
    assert no_deadline.handle.future.result()["y"][0] == 3.0
    with pytest.raises(DeadlineExceeded, match="while the request was being computed"):
        late.handle.future.result()
    assert gone.handle.future.cancelled()
    assert stats.late == 1


async def test_late_requests_are_counted_on_top_of_earlier_ones() -> None:
    stats = ModelStats()
    stats.late = 2
    batch = [request(features(1), 1, i, hard=1.0) for i in range(2)]
    settle_batch(batch, [{"y": np.zeros(1, np.float32)}] * 2, 2, 5.0, stats, NS)
    assert stats.late == 4


async def test_fewer_parts_than_requests_is_an_error_not_a_silent_skip() -> None:
    batch = [request(features(1), 1, 1), request(features(1), 1, 2)]
    with pytest.raises(ValueError):
        settle_batch(batch, [{"y": np.zeros(1, np.float32)}], 2, 0.0, ModelStats(), NS)


async def test_a_request_exactly_at_its_deadline_is_on_time() -> None:
    p = request(features(1), 1, 1, hard=5.0)
    settle_batch([p], [{"y": np.zeros(1, np.float32)}], 1, 5.0, ModelStats(), NS)
    assert p.handle.future.result()["y"].shape == (1,)


async def test_traced_requests_share_one_record_of_their_run() -> None:
    traced = [
        request(features(2), 2, 1, trace=True),
        request(features(1), 1, 2),
        request(features(1), 1, 3, trace=True),
    ]
    parts = [{"y": np.zeros(2, np.float32)}, {"y": np.zeros(1, np.float32)}, {"y": np.zeros(1, np.float32)}]
    settle_batch(traced, parts, 4, 0.0, ModelStats(), NS)
    first, second = traced[0].handle.trace, traced[2].handle.trace
    assert first is not None and second is not None and traced[1].handle.trace is None
    run = first.run
    assert run is not None and second.run is run
    assert (run.rows, run.requests, run.gather_ns, run.run_ns, run.scatter_ns, run.end_ns) == (4, 3, *NS)
    assert run.traced == [first, second]


def test_a_record_is_made_once_and_then_shared() -> None:
    a, b = QueueTrace(context="a"), QueueTrace(context="b")
    run = record_run(None, a, 6, 2, NS)
    assert record_run(run, b, 99, 99, (0, 0, 0, 0)) is run  # the first call's figures stand
    assert (run.rows, run.requests, run.traced, a.run, b.run) == (6, 2, [a, b], run, run)


def test_the_errors_say_what_happened() -> None:
    assert isinstance(stopped(), BatcherStopped)
    assert "model stopped before the request was computed" in str(stopped())
    assert isinstance(computed_late(), DeadlineExceeded)


async def test_only_answered_requests_count_in_queue_compute_and_inference_count() -> None:
    """A run of 4 rows: 2 answered (2 rows), one late and one whose caller went (1 row each).
    Queue, compute and rows are added for the answered ones only (each its own wait, each its
    batch's compute), as Triton counts successes; the run counts in batch_stats."""
    stats = ModelStats()
    on_time = request(features(1), 1, 1, hard=10.0)
    late = request(features(1), 1, 2, hard=4.0)
    gone = request(features(1), 1, 3)
    no_deadline = request(features(1), 1, 4)
    for p, waited in zip([on_time, late, gone, no_deadline], [100, 200, 300, 400], strict=True):
        p.counted, p.queued_ns = True, waited
    stats.record_run(4, NS[1] - NS[0], NS[2] - NS[1], NS[3] - NS[2])
    gone.handle.future.cancel()
    parts = [{"y": np.zeros((1,), np.float32)} for _ in range(4)]
    settle_batch([on_time, late, gone, no_deadline], parts, 4, 5.0, stats, (10, 25, 45, 70))
    assert (stats.queue.count, stats.queue.ns) == (2, 100 + 400)
    assert (stats.inference_count, stats.execution_count) == (2, 1)
    assert (stats.compute_input.count, stats.compute_input.ns) == (2, 2 * 15)
    assert (stats.compute_infer.count, stats.compute_infer.ns) == (2, 2 * 20)
    assert (stats.compute_output.count, stats.compute_output.ns) == (2, 2 * 25)
    assert stats.batch_stats[4].compute_infer.count == 1
    late.handle.future.exception()  # retrieved


class _Watched(ModelStats):
    """ModelStats that remembers every value its cumulative figures took, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, int, int, int]] = []

    def record_run(self, rows: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        super().record_run(rows, input_ns, infer_ns, output_ns)
        self._look()

    def record_computed(self, rows: int, compute_ns: tuple[int, int, int], requests: int = 1) -> None:
        super().record_computed(rows, compute_ns, requests)
        self._look()

    def count_queue(self, ns: int) -> None:
        super().count_queue(ns)
        self._look()

    def _look(self) -> None:
        figures = (self.inference_count, self.compute_infer.count, self.compute_infer.ns, self.queue.count)
        self.seen.append(figures)


async def test_a_run_s_unanswered_requests_never_make_a_cumulative_figure_go_down() -> None:
    """The metrics thread may read the figures between any two steps: rows and compute had been
    added for the whole run, then taken back for a late request and one whose caller went, so a
    scrape in between saw nv_inference_count go down (a counter reset to Prometheus's rate())."""
    stats = _Watched()
    on_time, late = request(features(1), 1, 1), request(features(1), 1, 2, hard=4.0)
    gone = request(features(1), 1, 3)
    for p in (on_time, late, gone):
        p.counted = True
    stats.record_run(3, NS[1] - NS[0], NS[2] - NS[1], NS[3] - NS[2])
    gone.handle.future.cancel()
    settle_batch([on_time, late, gone], [{"y": np.zeros((1,), np.float32)}] * 3, 3, 5.0, stats, NS)
    for before, after in zip(stats.seen, stats.seen[1:], strict=False):
        assert all(b <= a for b, a in zip(before, after, strict=True)), stats.seen
    assert stats.seen[-1] == (1, 1, NS[2] - NS[1], 1)
    late.handle.future.exception()  # retrieved


async def test_a_request_already_answered_elsewhere_is_not_counted_by_the_run() -> None:
    """Its future was settled before the run ended (withdrawn, failed by a stop): answered with an
    error, it is in no success figure (the run had counted its rows and compute all the same)."""
    stats = ModelStats()
    settled = request(features(1), 1, 1)
    settled.counted = True
    settled.handle.future.set_exception(DeadlineExceeded("withdrawn"))
    stats.record_run(1, 10, 10, 10)
    settle_batch([settled], [{"y": np.zeros((1,), np.float32)}], 1, 5.0, stats, NS)
    assert (stats.inference_count, stats.compute_infer.count, stats.execution_count) == (0, 0, 1)
    settled.handle.future.exception()  # retrieved
