"""Requests of several rows to a ragged model (batcher/batch_io.py, batcher/scatter.py), as Triton
serves them: its ragged input holds all of a request's elements (every row), its batch inputs one
value per request, and the outputs are split by the requests' rows, run alone (no dynamic
batching) or batched. Outputs of one row per request answer each request of one row with its own
row; a request of several rows then fails, never given another request's rows."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest

from batcher import BatchingPolicy, DynamicBatcher, ModelStats, Tensors
from batcher.batch_io import batch_inputs, settle_batch, splits_outputs
from batcher.errors import OutputNotSplit
from batcher.form import Pending
from batcher.queue import Request, Ticket
from batcher.ragged import BatchInputSpec, RaggedPlan
from batcher.scatter import scatter

PLAN = RaggedPlan(
    inputs=frozenset({"x"}),
    batch_inputs=(BatchInputSpec("BATCH_ELEMENT_COUNT", ("COUNT",), np.dtype(np.int64), "x"),),
)
BATCHED = BatchingPolicy(max_batch_size=8, ragged=PLAN)
# What server/models/version_loader.py makes of a ragged model without dynamic_batching.
ALONE = BatchingPolicy(max_batch_size=0, alone_with_rows=True, ragged=PLAN)
NS = (10, 20, 30, 40)
LONG = 5.0  # an upper bound no healthy run comes near


def request(inputs: Tensors, rows: int, seq: int) -> Request:
    future: asyncio.Future[Tensors] = asyncio.get_running_loop().create_future()
    return Pending(inputs, rows, 1, 0.0, seq, Ticket(future))


def ragged(rows: int, width: int, start: float = 0.0) -> Tensors:
    return {"x": np.arange(start, start + rows * width, dtype=np.float32).reshape(rows, width)}


async def test_a_request_of_several_rows_run_alone_gathers_all_its_elements() -> None:
    # Admitted as 1 row (each request runs alone), its arrays hold 3: gather had refused it
    # ("expected 1 rows"), which answered INTERNAL.
    own = ragged(3, 3)
    inputs, offsets = batch_inputs([request(own, 1, 1)], ALONE)
    np.testing.assert_array_equal(inputs["x"], own["x"].ravel())
    assert inputs["COUNT"].tolist() == [9]  # one value per request: all its elements
    assert offsets == [0, 3]


async def test_batched_requests_of_several_rows_get_one_batch_input_value_each() -> None:
    a, b = ragged(1, 4), ragged(3, 3, 100.0)
    inputs, offsets = batch_inputs([request(a, 1, 1), request(b, 3, 2)], BATCHED)
    np.testing.assert_array_equal(inputs["x"], np.concatenate([a["x"].ravel(), b["x"].ravel()]))
    assert inputs["COUNT"].tolist() == [4, 9]
    assert offsets == [0, 1, 4]


def test_a_ragged_models_outputs_are_split_by_rows_even_run_alone() -> None:
    assert splits_outputs(ALONE) and splits_outputs(BATCHED)
    assert not splits_outputs(BatchingPolicy(max_batch_size=0, alone_with_rows=True))  # whole, as before


async def test_a_request_its_outputs_hold_no_rows_for_fails_alone() -> None:
    stats = ModelStats()
    batch = [request(ragged(1, 2), 1, 1), request(ragged(3, 2), 3, 2)]
    for p in batch:
        p.counted = True
    stats.record_run(4, NS[1] - NS[0], NS[2] - NS[1], NS[3] - NS[2])
    parts = [{"y": np.zeros((1, 1), np.float32)}, OutputNotSplit("failed to split the output tensor 'y'")]
    settle_batch(batch, parts, 4, 0.0, stats, NS)
    assert batch[0].handle.future.result()["y"].shape == (1, 1)
    with pytest.raises(OutputNotSplit, match="'y'"):
        batch[1].handle.future.result()
    assert (stats.inference_count, stats.compute_infer.count) == (1, 1)  # Triton counts successes only


class OneRowPerRequest:
    """A ragged model's backend that answers one row per request: its element count (COUNT)."""

    async def run(self, inputs: Tensors) -> Tensors:
        return {"sum": inputs["COUNT"].astype(np.float32).reshape(-1, 1)}


def several_rows(rows: int, requests: int) -> str:
    return (
        "failed to split the output tensor 'sum' in responses: the model answered one row per request "
        f"({requests} rows for {requests} requests) and this request has {rows} rows: send one row "
        "per request"
    )


@pytest.mark.parametrize("policy", [ALONE, BATCHED], ids=["alone", "batched"])
async def test_several_rows_to_one_row_per_request_fail_in_tritons_words(
    policy: BatchingPolicy, caplog: pytest.LogCaptureFixture
) -> None:
    b = DynamicBatcher([OneRowPerRequest()], policy, ModelStats(), name="model m version 1")
    b.start()
    try:
        one = await asyncio.wait_for(b.submit(ragged(1, 5), 1), LONG)
        assert one["sum"].tolist() == [[5.0]]
        rows = 3 if policy.max_batch_size else 1  # as admitted: a request run alone is 1
        warnings = caplog.at_level(logging.WARNING, logger="batcher.run_batch")
        with warnings, pytest.raises(OutputNotSplit) as info:
            await asyncio.wait_for(b.submit(ragged(3, 3), rows), LONG)
        assert str(info.value) == several_rows(3, 1)
        assert "model m version 1" in caplog.text and "output shapes {'sum': (1, 1)}" in caplog.text
    finally:
        await b.stop(drain=False, timeout_s=0.1)


async def test_requests_of_one_row_batched_with_several_rows_get_their_own_row() -> None:
    # The tester's batch: A (2 rows), B and C (1 row each), one run of 4 rows, outputs of 3 (one per
    # request). Split by rows, A got its row and B's, and B got C's row with OK.
    policy = BatchingPolicy(max_batch_size=8, preferred_batch_sizes=(4,), max_queue_delay_s=60.0, ragged=PLAN)
    b = DynamicBatcher([OneRowPerRequest()], policy, ModelStats())
    b.start()
    try:
        tasks = [
            asyncio.create_task(b.submit(x, rows))
            for x, rows in [(ragged(2, 1), 2), (ragged(1, 5), 1), (ragged(1, 7), 1)]
        ]
        a, b_answer, c = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), LONG)
        assert isinstance(a, OutputNotSplit) and str(a) == several_rows(2, 3)
        assert isinstance(b_answer, dict) and b_answer["sum"].tolist() == [[5.0]]  # its own count
        assert isinstance(c, dict) and c["sum"].tolist() == [[7.0]]
    finally:
        await b.stop(drain=False, timeout_s=0.1)


def test_scatter_by_request_gives_each_request_of_one_row_its_own_row() -> None:
    offsets = [0, 1, 2, 5]  # rows 1, 1, 3: outputs of 3 rows are one per request
    per_request, per_row = np.arange(3.0).reshape(3, 1), np.arange(5.0).reshape(5, 1)
    first, second, third = scatter({"s": per_request, "r": per_row}, offsets, per_request=True)
    assert isinstance(first, dict) and first["s"].tolist() == [[0.0]] and first["r"].tolist() == [[0.0]]
    assert isinstance(second, dict) and second["s"].tolist() == [[1.0]] and second["r"].tolist() == [[1.0]]
    assert isinstance(third, OutputNotSplit) and str(third).startswith(
        "failed to split the output tensor 's' in responses: the model answered one row per request (3 rows"
    )


@pytest.mark.parametrize("rows", [2, 4, 6])
def test_scatter_refuses_the_whole_run_for_rows_neither_per_row_nor_per_request(rows: int) -> None:
    # 3 requests, 5 rows: an output of 2, 4 or 6 rows cannot be told apart by request or by row.
    with pytest.raises(ValueError, match=r"'s'.*batch of 5 rows in 3 requests"):
        scatter({"s": np.zeros((rows, 1))}, [0, 1, 2, 5], per_request=True)
    with pytest.raises(ValueError, match=r"'s'.*batch of 5 rows"):  # not ragged: never per request
        scatter({"s": np.zeros((3, 1))}, [0, 1, 2, 5])
