"""The codec's paths that mutation testing showed untested (server/protocol/codec.py): inputs in
shared memory beside raw ones (which raw entry belongs to which input, the count's message, a view
or a private copy), more than two raw inputs, malformed BYTES data named, and outputs written to a
region with an empty raw entry in their place."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from server.errors import InvalidRequest
from server.protocol import codec, shm_tensors
from server.protocol.shm_tensors import ShmTensors
from tests.unit.test_mutants_shm import params
from tests.unit.test_shared_memory import obj, registry

VALUES = np.arange(6, dtype=np.float32)


def fp32_input(
    name: str, shape: list[int], p: dict[str, pb.InferParameter] | None = None
) -> pb.ModelInferRequest.InferInputTensor:
    return pb.ModelInferRequest.InferInputTensor(name=name, datatype="FP32", shape=shape, parameters=p)


def mixed_request(tmp_path: Path, raw: list[bytes]) -> tuple[pb.ModelInferRequest, ShmTensors]:
    """Inputs a (raw), s (in the region), b (raw), c (raw)."""
    shm = registry(tmp_path)
    shm.register("r", obj(tmp_path, "o", VALUES.tobytes()), 0, 24)
    request = pb.ModelInferRequest(
        model_name="m",
        inputs=[
            fp32_input("a", [1]),
            fp32_input("s", [2, 3], params("r", 24)),
            fp32_input("b", [1]),
            fp32_input("c", [1]),
        ],
        raw_input_contents=raw,
    )
    tensors = shm_tensors.resolve(request, shm)
    assert tensors is not None
    return request, tensors


def f32(value: float) -> bytes:
    return np.float32(value).tobytes()


def test_raw_entries_go_to_the_inputs_outside_shared_memory_in_order(tmp_path: Path) -> None:
    request, tensors = mixed_request(tmp_path, [f32(1), f32(2), f32(3)])
    arrays = codec.decode_inputs(request, tensors)
    assert [arrays[n].tolist() for n in "abc"] == [[1.0], [2.0], [3.0]]
    assert arrays["s"].shape == (2, 3) and arrays["s"].dtype == np.float32
    np.testing.assert_array_equal(arrays["s"], VALUES.reshape(2, 3))
    assert not np.shares_memory(arrays["s"], tensors.inputs["s"].region.mapping)  # copied out


def test_a_raw_count_that_misses_the_inputs_outside_shared_memory_says_so(tmp_path: Path) -> None:
    request, tensors = mixed_request(tmp_path, [f32(1), f32(2)])
    with pytest.raises(InvalidRequest) as refused:
        codec.decode_inputs(request, tensors)
    assert str(refused.value) == (
        "raw_input_contents has 2 entries but the request has 3 inputs outside shared memory"
    )
    (tmp_path / "again").mkdir()
    request, tensors = mixed_request(tmp_path / "again", [f32(1), f32(2), f32(3), f32(4)])
    with pytest.raises(InvalidRequest, match=r"has 4 entries but the request has 3 inputs outside"):
        codec.decode_inputs(request, tensors)


def test_without_shared_memory_the_count_message_says_inputs_only() -> None:
    request = pb.ModelInferRequest(
        model_name="m", inputs=[fp32_input("a", [1]), fp32_input("b", [1])],
        raw_input_contents=[f32(1)],
    )  # fmt: skip
    with pytest.raises(InvalidRequest) as refused:
        codec.decode_inputs(request)
    assert str(refused.value) == "raw_input_contents has 1 entries but the request has 2 inputs"


def test_bytes_data_whose_element_runs_past_its_end_names_the_input() -> None:
    data = struct.pack("<I", 10) + b"abc"  # one element, as the shape says, but 10 bytes long
    request = pb.ModelInferRequest(
        model_name="m",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES", shape=[1])],
        raw_input_contents=[data],
    )
    with pytest.raises(InvalidRequest) as refused:
        codec.decode_inputs(request)
    assert str(refused.value).startswith("input 'text': ")


def test_outputs_in_shared_memory_are_written_there_with_an_empty_raw_entry(tmp_path: Path) -> None:
    shm = registry(tmp_path)
    shm.register("out", obj(tmp_path, "o", bytes(16)), 0, 16)
    request = pb.ModelInferRequest(model_name="m")
    request.outputs.add(name="y", parameters=params("out", 16))
    request.outputs.add(name="z")
    tensors = shm_tensors.resolve(request, shm)
    y, z = np.array([1.5, 2.5, 3.5, 4.5], np.float32), np.array([7, 8], np.int32)
    response = codec.encode_response("m", "1", "id-1", {"y": y, "z": z}, ["y", "z"], tensors)
    assert list(response.raw_output_contents) == [b"", z.tobytes()]
    assert [(o.name, list(o.shape), o.datatype) for o in response.outputs] == [
        ("y", [4], "FP32"),
        ("z", [2], "INT32"),
    ]
    assert (tmp_path / "o").read_bytes() == y.tobytes()
