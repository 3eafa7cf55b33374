"""Shapes from untrusted requests: checked before anything sized by them is allocated."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import wire
from server.errors import InvalidRequest
from server.protocol import codec


def request(datatype: str, shape: list[int], raw: bytes) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name="m",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype=datatype, shape=shape)],
        raw_input_contents=[raw],
    )


def test_a_huge_bytes_shape_with_little_data_is_refused_before_allocating() -> None:
    # 39 bytes of request that once allocated gigabytes: 4e6 x 64 elements, 4 bytes of data.
    tracemalloc.start()
    try:
        with pytest.raises(
            InvalidRequest,
            match=r"^input 'x': the request holds 256000000 BYTES elements so far; at most 262144 per",
        ):
            codec.decode_inputs(request("BYTES", [4_000_000, 64], b"\x00\x00\x00\x00"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000  # bytes: nothing sized by the shape


@pytest.mark.parametrize("shape", [[0, 2**62, 2**62], [2**41], [0, 2**21, 2**20]])
def test_shapes_numpy_cannot_describe_are_invalid_argument_naming_the_limit(shape: list[int]) -> None:
    for datatype in ("FP32", "BYTES"):
        with pytest.raises(
            InvalidRequest, match=rf"input 'x': shape .* (exceeds|multiply past) {codec.MAX_ELEMENTS}"
        ):
            codec.decode_inputs(request(datatype, shape, b""))


def test_a_zero_size_tensor_with_large_dimensions_is_still_accepted() -> None:
    arrays = codec.decode_inputs(request("FP32", [0, 2**20, 2**19], b""))
    assert arrays["x"].shape == (0, 2**20, 2**19)


def test_unpack_bytes_checks_the_count_against_the_data() -> None:
    with pytest.raises(ValueError, match="cannot hold 3 elements"):
        wire.unpack_bytes(b"\x00" * 8, 3)
    empty_pair = wire.unpack_bytes(b"\x00" * 8, 2)  # two empty elements: exactly 8 bytes
    assert list(empty_pair) == [b"", b""]
    assert wire.unpack_bytes(b"", 0).shape == (0,)
    np.testing.assert_array_equal(wire.unpack_bytes(wire.pack_bytes(np.array([b"ab"], object)), 1), [b"ab"])


def test_elements_decoded_one_by_one_are_bounded_per_request() -> None:
    # 5,000,000 empty strings (20 MB) held the event loop for seconds: refused before decoding.
    empty = b"\x00\x00\x00\x00" * 300_000
    with pytest.raises(InvalidRequest, match=r"300000 BYTES elements so far; at most 262144 per request"):
        codec.decode_inputs(request("BYTES", [300_000], empty))
    assert codec.decode_inputs(request("BYTES", [262_144], empty[: 4 * 262_144]))["x"].shape == (262_144,)
    typed = pb.ModelInferRequest(model_name="m")
    tensor = typed.inputs.add(name="x", datatype="FP32", shape=[codec.MAX_TYPED_ELEMENTS + 1])
    tensor.contents.fp32_contents.extend([0.0] * (codec.MAX_TYPED_ELEMENTS + 1))
    with pytest.raises(InvalidRequest, match="typed contents values so far; at most 2097152 per request"):
        codec.decode_inputs(typed)
