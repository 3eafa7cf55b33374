"""Outputs that cannot be their request's answer, known only once computed (an output region too
small for an output of variable shape or BYTES, an answer over max_message_bytes): refused before
the batcher counts them, so the request is in `fail` alone, never also in queue, compute and
inference_count (it had been in both); its run still counts in execution_count and batch_stats."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from batcher import BatchingPolicy, DynamicBatcher, ModelStats, Tensors
from protos import grpc_service_pb2 as pb
from server import datatypes
from server.errors import AnswerTooLarge, InvalidRequest
from server.protocol import codec
from server.protocol.answer_checks import check_answer, check_outputs
from server.protocol.shm_tensors import ShmSlice, ShmTensors
from server.protocol.validate import TensorSpec


class Doubles:
    async def run(self, inputs: Tensors) -> Tensors:
        return {"y": inputs["x"] * 2}


class BlockingDoubles(Doubles):
    """Runs inline on the event loop once known cheap (the batcher's fast path)."""

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1)

    def run_blocking(self, inputs: Tensors) -> Tensors:
        return {"y": inputs["x"] * 2}


def refuse_wide(outputs: Tensors) -> None:
    """An Admission.accept: refuses outputs wider than 2 columns (as a region too small would)."""
    if outputs["y"].shape[1] > 2:
        raise InvalidRequest("output 'y' does not fit")


async def test_a_refused_answer_is_not_counted_as_computed_and_the_next_one_is() -> None:
    stats = ModelStats()
    batcher = DynamicBatcher([Doubles()], BatchingPolicy(max_batch_size=8), stats, inline_max_s=0.0)
    batcher.start()
    try:
        refused = batcher.admission(1)._replace(accept=refuse_wide)
        with pytest.raises(InvalidRequest, match="does not fit"):
            await batcher.enqueue({"x": np.ones((1, 3), np.float32)}, refused)
        counted = (stats.inference_count, stats.queue.count, stats.compute_infer.count)
        assert counted == (0, 0, 0), counted
        assert stats.execution_count == 1 and stats.batch_stats[1].compute_infer.count == 1  # the run
        out = await batcher.enqueue(
            {"x": np.ones((1, 2), np.float32)}, batcher.admission(1)._replace(accept=refuse_wide)
        )
        assert out["y"].shape == (1, 2)
        assert (stats.inference_count, stats.queue.count, stats.compute_infer.count) == (1, 1, 1)
    finally:
        await batcher.stop(drain=False, timeout_s=0.1)


async def test_the_fast_path_refuses_before_counting_too() -> None:
    stats = ModelStats()
    backend = BlockingDoubles()
    batcher = DynamicBatcher([backend], BatchingPolicy(max_batch_size=8), stats, inline_max_s=1.0)
    batcher.start()
    try:
        await batcher.enqueue({"x": np.ones((1, 3), np.float32)}, batcher.admission(1))  # cheap at this size
        with pytest.raises(InvalidRequest, match="does not fit"):
            batcher.run_now(
                {"x": np.ones((1, 3), np.float32)}, batcher.admission(1)._replace(accept=refuse_wide)
            )
        assert (stats.execution_count, stats.inference_count, stats.queue.count) == (2, 1, 1)
        assert stats.compute_infer.count == 1
    finally:
        await batcher.stop(drain=False, timeout_s=0.1)
        backend.executor.shutdown()


class FakeRegion:
    name = "out"
    byte_size = 64


def shm_for(name: str, byte_size: int) -> ShmTensors:
    return ShmTensors({}, {name: ShmSlice(FakeRegion(), 0, byte_size)})  # type: ignore[arg-type]


HEADER = pb.ModelInferResponse(model_name="m", model_version="1", id="r")


def test_a_variable_output_too_large_for_its_region_is_refused_naming_both_sizes() -> None:
    outputs = {"Y": np.ones((2, 3), np.float32)}  # 24 bytes
    with pytest.raises(InvalidRequest, match=r"output 'Y' \(16 bytes\) should be at least 24 bytes"):
        check_outputs(outputs, ["Y"], shm_for("Y", 16), None, None, HEADER)
    check_outputs(outputs, ["Y"], shm_for("Y", 24), None, None, HEADER)


def test_a_bytes_output_is_sized_as_packed() -> None:
    outputs = {"T": np.array([b"abc", "\u03bb"], dtype=object)}  # 4 + 3 + 4 + 2 bytes
    with pytest.raises(InvalidRequest, match="should be at least 13 bytes"):
        check_outputs(outputs, ["T"], shm_for("T", 12), None, None, HEADER)
    check_outputs(outputs, ["T"], shm_for("T", 13), None, None, HEADER)


def test_a_fixed_bytes_output_is_refused_before_its_run_when_even_its_lengths_do_not_fit() -> None:
    specs = {
        "T": TensorSpec("T", datatypes.BYTES, (3,)),
        "V": TensorSpec("V", datatypes.BYTES, (-1,)),  # may be empty: known once computed
    }
    # Its lengths alone are known before the run: the message says the strings come on top (a
    # client that sized its region to "at least 24 bytes" was refused again after the run).
    lengths = r"output 'T' \(20 bytes\) should be at least 24 bytes plus the strings themselves"
    with pytest.raises(InvalidRequest, match=lengths):
        shm_for("T", 20).check_fixed_outputs(specs, ["T"], rows=2)
    shm_for("T", 24).check_fixed_outputs(specs, ["T"], rows=2)
    shm_for("V", 0).check_fixed_outputs(specs, ["V"], rows=2)


@pytest.mark.parametrize("frame", [False, True])
def test_the_answer_limit_is_the_encoded_message_size_exactly(frame: bool) -> None:
    """The check before counting sizes the answer without encoding it: exactly the encoded size."""
    outputs = {"Y": np.ones((1, 20_000), np.float32), "Z": np.ones((3,), np.int64)}
    request = pb.ModelInferRequest(id="r") if frame else None
    answer = codec.encode_response("m", "1", "r", outputs, ["Y", "Z"])
    size = answer.ByteSize()
    if frame:  # every stream answer carries the final-response flag
        flagged = pb.ModelInferResponse()
        flagged.CopyFrom(answer)
        flagged.parameters["triton_final_response"].bool_param = True
        size = pb.ModelStreamInferResponse(infer_response=flagged).ByteSize()
    with pytest.raises(
        AnswerTooLarge, match=f"answer message larger than max \\({size} vs. {size - 1} bytes"
    ):
        check_outputs(outputs, ["Y", "Z"], None, size - 1, request, HEADER)
    with pytest.raises(AnswerTooLarge, match=f"\\({size} vs. {size - 1} bytes"):
        check_answer(answer, size - 1, request)
    check_outputs(outputs, ["Y", "Z"], None, size, request, HEADER)
    check_answer(answer, size, request)


def test_a_stream_answer_with_the_final_flag_counts_the_flag() -> None:
    outputs = {"Y": np.ones((1, 20_000), np.float32)}
    request = pb.ModelInferRequest(id="r")  # asked for or not, every stream answer carries it
    answer = codec.encode_response("m", "1", "r", outputs, ["Y"])
    answer.parameters["triton_final_response"].bool_param = True
    size = pb.ModelStreamInferResponse(infer_response=answer).ByteSize()
    with pytest.raises(AnswerTooLarge, match=f"\\({size} vs. {size - 1} bytes"):
        check_outputs(outputs, ["Y"], None, size - 1, request, HEADER)
    check_outputs(outputs, ["Y"], None, size, request, HEADER)


def test_a_bytes_output_far_too_large_for_its_region_hears_its_packed_size() -> None:
    # 100 items of 3 bytes: 700 bytes packed; a 64-byte region had heard "at least 400" (4 an item).
    outputs = {"T": np.array([b"1.5"] * 100, dtype=object)}
    with pytest.raises(InvalidRequest, match=r"output 'T' \(64 bytes\) should be at least 700 bytes"):
        check_outputs(outputs, ["T"], shm_for("T", 64), None, None, HEADER)
