"""Tests that kill mutants of batcher/admission.py, server/protocol/codec.py and
server/protocol/validate.py that survived the unit tests (tests/MUTANTS.md): exact error messages
naming their field, the MAX_ELEMENTS boundary, BYTES in typed contents and in outputs, the
response's fields, and models with max_batch_size 0 and 1."""

from __future__ import annotations

import numpy as np
import pytest

from batcher.admission import Admission
from batcher.errors import TooManyRows
from batcher.types import BatchingPolicy
from protos import grpc_service_pb2 as pb
from protos import model_config_pb2 as mc
from protos import wire
from server.errors import InvalidRequest
from server.protocol import codec
from server.protocol.validate import Signature


def tensor(name: str, datatype: str, shape: list[int]) -> pb.ModelInferRequest.InferInputTensor:
    return pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)


def config(max_batch_size: int, dims: list[int] = [4], name: str = "m") -> mc.ModelConfig:  # noqa: B006
    return mc.ModelConfig(
        name=name,
        max_batch_size=max_batch_size,
        input=[
            mc.ModelInput(name="a", data_type=mc.TYPE_FP32, dims=dims),
            mc.ModelInput(name="b", data_type=mc.TYPE_FP32, dims=dims),
        ],
        output=[
            mc.ModelOutput(name="y", data_type=mc.TYPE_FP32, dims=dims),
            mc.ModelOutput(name="z", data_type=mc.TYPE_FP32, dims=dims),
        ],
    )


# --- batcher/admission.py ---------------------------------------------------------------------


def test_settle_without_priority_uses_the_default_level() -> None:
    policy = BatchingPolicy(max_batch_size=4, priority_levels=3, default_priority=2)
    assert Admission.settle(policy, 1, now=0.0).priority == 2


def test_settle_with_max_batch_size_1() -> None:
    policy = BatchingPolicy(max_batch_size=1)
    assert Admission.settle(policy, 1, now=0.0).rows == 1
    with pytest.raises(TooManyRows, match="request has 2 rows but the model accepts at most 1"):
        Admission.settle(policy, 2, now=0.0)
    with pytest.raises(ValueError, match="rows must be at least 1, got 0"):
        Admission.settle(policy, 0, now=0.0)


# --- server/protocol/codec.py -----------------------------------------------------------------


def test_raw_count_mismatch_message() -> None:
    request = pb.ModelInferRequest(
        inputs=[tensor("x", "FP32", [1]), tensor("w", "FP32", [1])], raw_input_contents=[b"\0" * 4]
    )
    with pytest.raises(InvalidRequest) as info:
        codec.decode_inputs(request)
    assert str(info.value) == "raw_input_contents has 1 entries but the request has 2 inputs"


def test_exactly_max_elements_passes_the_shape_check() -> None:
    request = pb.ModelInferRequest(
        inputs=[tensor("x", "UINT8", [codec.MAX_ELEMENTS])], raw_input_contents=[b"\0"]
    )
    with pytest.raises(InvalidRequest) as info:
        codec.decode_inputs(request)
    assert str(info.value) == (
        f"input byte size mismatch for input 'x' for model ''. Expected {codec.MAX_ELEMENTS}, got 1; "
        f"raw_input_contents[0] for shape [{codec.MAX_ELEMENTS}] of UINT8"
    )


def test_one_more_than_max_elements_is_refused() -> None:
    shape = [codec.MAX_ELEMENTS + 1]
    request = pb.ModelInferRequest(inputs=[tensor("x", "UINT8", shape)], raw_input_contents=[b"\0"])
    with pytest.raises(InvalidRequest) as info:
        codec.decode_inputs(request)
    assert str(info.value) == f"input 'x': shape {shape} exceeds {codec.MAX_ELEMENTS} elements"


def test_contents_count_error_names_the_input() -> None:
    t = tensor("x", "FP32", [3])
    t.contents.fp32_contents.extend([1.0, 2.0])
    with pytest.raises(InvalidRequest) as info:
        codec.decode_inputs(pb.ModelInferRequest(inputs=[t]))
    assert str(info.value) == "input 'x': contents.fp32_contents has 2 elements, expected 3 for shape [3]"


def test_fp16_in_contents_message() -> None:
    with pytest.raises(InvalidRequest) as info:
        codec.decode_inputs(pb.ModelInferRequest(inputs=[tensor("h", "FP16", [1])]))
    assert str(info.value) == "input 'h': FP16 data must be sent in raw_input_contents"


def test_bytes_in_contents_keep_a_2d_shape() -> None:
    t = tensor("s", "BYTES", [2, 2])
    t.contents.bytes_contents.extend([b"a", b"bc", b"", b"d"])
    array = codec.decode_inputs(pb.ModelInferRequest(inputs=[t]))["s"]
    assert array.shape == (2, 2)
    assert array.dtype == object
    assert array.tolist() == [[b"a", b"bc"], [b"", b"d"]]


def test_bytes_output_is_encoded() -> None:
    array = np.array([b"ab", b"", b"xyz"], dtype=object)
    response = codec.encode_response("m", "1", "id", {"s": array}, ["s"])
    assert response.outputs[0].datatype == "BYTES"
    assert response.raw_output_contents[0] == wire.pack_bytes(array)
    assert response.raw_output_contents[0] == b"\x02\0\0\0ab\0\0\0\0\x03\0\0\0xyz"
    assert codec.raw_bytes(np.array(["hi"])) == b"\x02\0\0\0hi"


def test_response_fields() -> None:
    outputs = {"y": np.zeros((2, 3), np.float32), "z": np.ones(5, np.int64)}
    response = codec.encode_response("model-a", "7", "req-9", outputs, ["z", "y"])
    assert response.model_name == "model-a"
    assert response.model_version == "7"
    assert response.id == "req-9"
    assert [o.name for o in response.outputs] == ["z", "y"]
    assert [list(o.shape) for o in response.outputs] == [[5], [2, 3]]
    assert [o.datatype for o in response.outputs] == ["INT64", "FP32"]
    assert list(response.raw_output_contents) == [outputs["z"].tobytes(), outputs["y"].tobytes()]


# --- server/protocol/validate.py --------------------------------------------------------------


def test_from_config_messages_name_the_model() -> None:
    signature = Signature.from_config(config(4, name="resnet"))
    assert signature.model == "resnet"
    with pytest.raises(InvalidRequest) as info:
        signature.check_inputs({"a": np.zeros((1, 4), np.float32)})
    assert str(info.value) == (
        "expected 2 inputs but got 1 inputs for model 'resnet'. Got input(s) ['a'], "
        "but missing required input(s) ['b']. Please provide all required input(s)."
    )


def test_wire_shape_by_max_batch_size() -> None:
    for mbs, expected in ((0, [4, -1]), (1, [-1, 4, -1]), (8, [-1, 4, -1])):
        signature = Signature.from_config(config(mbs, dims=[4, -1]))
        assert signature.wire_shape(signature.inputs["a"]) == expected
        assert type(signature.wire_shape(signature.inputs["a"])) is list


def test_unknown_input_lists_the_expected_ones() -> None:
    signature = Signature.from_config(config(4))
    with pytest.raises(InvalidRequest) as info:
        signature.check_inputs({"q": np.zeros((1, 4), np.float32)})
    assert str(info.value) == "unexpected inference input 'q' for model 'm'; its inputs: a, b"


def test_check_inputs_with_max_batch_size_1() -> None:
    signature = Signature.from_config(config(1))
    one = np.zeros((1, 4), np.float32)
    assert signature.check_inputs({"a": one, "b": one}) == 1
    empty = np.zeros((0, 4), np.float32)
    with pytest.raises(InvalidRequest) as info:
        signature.check_inputs({"a": empty, "b": empty})
    assert str(info.value) == "request for model 'm' has a batch dimension of 0 rows"
    two = np.zeros((2, 4), np.float32)
    with pytest.raises(InvalidRequest) as info:
        signature.check_inputs({"a": two, "b": two})
    assert str(info.value) == "inference request batch-size must be <= 1 for 'm'; the request has 2 rows"
    # Without a batch dimension the whole [1, 4] shape is checked against dims [4]: refused.
    with pytest.raises(InvalidRequest) as info:
        Signature.from_config(config(0)).check_inputs({"a": one, "b": one})
    assert str(info.value) == "unexpected shape for input 'a' for model 'm'. Expected [4], got [1,4]."


def test_per_row_scalar_inputs() -> None:
    signature = Signature.from_config(config(4, dims=[]))
    rows = np.zeros(3, np.float32)
    assert signature.check_inputs({"a": rows, "b": rows}) == 3


def test_rows_equal_to_max_batch_size_are_accepted() -> None:
    signature = Signature.from_config(config(4))
    full = np.zeros((4, 4), np.float32)
    assert signature.check_inputs({"a": full, "b": full}) == 4


def test_unknown_output_lists_the_outputs() -> None:
    signature = Signature.from_config(config(4))
    assert signature.check_outputs([]) == ["y", "z"]
    with pytest.raises(InvalidRequest) as info:
        signature.check_outputs(["q"])
    assert str(info.value) == "unknown output 'q' requested from model 'm' (outputs: y, z)"
