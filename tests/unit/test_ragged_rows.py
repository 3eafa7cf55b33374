"""Requests of several rows to a ragged model (batcher/batch_io.py, batcher/scatter.py), as Triton
serves them: its ragged input holds all of a request's elements (every row), its batch inputs one
value per request, and the outputs are split by the requests' rows, run alone (no dynamic
batching) or batched. Outputs with fewer rows than that fail only the requests past their end."""

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
    stats.record_batch(4, 2, NS[1] - NS[0], NS[2] - NS[1], NS[3] - NS[2])
    parts = [{"y": np.zeros((1, 1), np.float32)}, OutputNotSplit("failed to split the output tensor 'y'")]
    settle_batch(batch, parts, 4, 0.0, stats, NS)
    assert batch[0].handle.future.result()["y"].shape == (1, 1)
    with pytest.raises(OutputNotSplit, match="'y'"):
        batch[1].handle.future.result()
    assert stats.inference_count == 1  # its rows taken back: Triton counts successes only


class OneRowPerRequest:
    """A ragged model's backend that answers one row per request (from its batch input)."""

    async def run(self, inputs: Tensors) -> Tensors:
        return {"sum": np.zeros((len(inputs["COUNT"]), 1), np.float32)}


@pytest.mark.parametrize("policy", [ALONE, BATCHED], ids=["alone", "batched"])
async def test_several_rows_to_one_row_per_request_fail_in_tritons_words(
    policy: BatchingPolicy, caplog: pytest.LogCaptureFixture
) -> None:
    b = DynamicBatcher([OneRowPerRequest()], policy, ModelStats(), name="model m version 1")
    b.start()
    try:
        one = await asyncio.wait_for(b.submit(ragged(1, 5), 1), LONG)
        assert one["sum"].shape == (1, 1)
        rows = 3 if policy.max_batch_size else 1  # as admitted: a request run alone is 1
        warnings = caplog.at_level(logging.WARNING, logger="batcher.run_batch")
        with warnings, pytest.raises(OutputNotSplit) as info:
            await asyncio.wait_for(b.submit(ragged(3, 3), rows), LONG)
        assert str(info.value) == (
            "failed to split the output tensor 'sum' in responses: expected batch size of at least 3 in "
            "model output, got 1"
        )
        assert "model m version 1" in caplog.text and "output shapes {'sum': (1, 1)}" in caplog.text
    finally:
        await b.stop(drain=False, timeout_s=0.1)
