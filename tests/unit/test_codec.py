"""Decoding and encoding tensors, and checking them against a model signature."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import model_config_pb2 as mc
from protos import wire
from server.errors import InvalidRequest, status_for
from server.protocol import codec
from server.protocol.controls import parse_controls
from server.protocol.validate import Signature


def request_with(name: str, datatype: str, shape: list[int], raw: bytes) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        inputs=[pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)],
        raw_input_contents=[raw],
    )


@pytest.mark.parametrize(
    "dtype", [np.bool_, np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16, np.int32, np.int64,
              np.float16, np.float32, np.float64],
)  # fmt: skip
def test_raw_round_trip_every_fixed_size_datatype(dtype: type) -> None:
    array = (np.arange(12) % 2 if dtype is np.bool_ else np.arange(12)).astype(dtype).reshape(3, 4)
    response = codec.encode_response("m", "1", "id", {"out": array}, ["out"])
    wire = response.outputs[0].datatype
    decoded = codec.decode_inputs(request_with("x", wire, [3, 4], response.raw_output_contents[0]))
    np.testing.assert_array_equal(decoded["x"], array)
    assert decoded["x"].dtype == array.dtype


def test_decode_is_a_zero_copy_view() -> None:
    raw = np.ones((2, 2), np.float32).tobytes()
    decoded = codec.decode_inputs(request_with("x", "FP32", [2, 2], raw))["x"]
    assert not decoded.flags.owndata


def test_bytes_round_trip_and_errors() -> None:
    items = np.array([b"", b"abc", "é".encode()], dtype=object)
    raw = wire.pack_bytes(items)
    decoded = codec.decode_inputs(request_with("s", "BYTES", [3], raw))["s"]
    assert list(decoded) == list(items)
    assert wire.pack_bytes(np.array(["x", "yz"], dtype=object)) == wire.pack_bytes(
        np.array([b"x", b"yz"], dtype=object)
    )
    # Triton's wording (its qa/L0_input_validation matches these texts).
    with pytest.raises(
        InvalidRequest, match=r"^expected 4 string elements for inference input 's' for model '', got 3$"
    ):
        codec.decode_inputs(request_with("s", "BYTES", [4], raw))
    with pytest.raises(
        InvalidRequest,
        match=r"^unexpected number of string elements 3 for inference input 's' for model '', expecting 2$",
    ):
        codec.decode_inputs(request_with("s", "BYTES", [2], raw))
    with pytest.raises(InvalidRequest, match="3 bytes left after 2 BYTES elements"):  # no 4-byte prefix left
        codec.decode_inputs(request_with("s", "BYTES", [2], wire.pack_bytes(items[:2]) + b"abc"))
    with pytest.raises(InvalidRequest, match="element 0 is cut short"):
        codec.decode_inputs(request_with("s", "BYTES", [1], b"\x09\x00\x00\x00ab"))


def test_bytes_count_errors_name_the_last_input_sent_as_triton_does() -> None:
    # Two BYTES inputs both short of their shape: Triton (and its L0_input_validation) names the
    # input sent last; an error of another kind stays with the input it is about.
    short = wire.pack_bytes(np.array([b"a", b"b"], dtype=object))
    tensor = pb.ModelInferRequest.InferInputTensor
    request = pb.ModelInferRequest(
        model_name="m",
        inputs=[tensor(name=n, datatype="BYTES", shape=[3]) for n in ("A", "B")],
        raw_input_contents=[short, short],
    )
    with pytest.raises(InvalidRequest, match=r"^expected 3 string elements for inference input 'B' "):
        codec.decode_inputs(request)
    request.raw_input_contents[1] = wire.pack_bytes(np.array([b"a", b"b", b"c"], dtype=object))
    with pytest.raises(InvalidRequest, match=r"^expected 3 string elements for inference input 'A' "):
        codec.decode_inputs(request)


def test_decode_rejects_inconsistent_requests() -> None:
    with pytest.raises(
        InvalidRequest, match=r"^input byte size mismatch for input 'x' for model ''\. Expected 8, got 3;"
    ):
        codec.decode_inputs(request_with("x", "FP32", [2], b"abc"))
    with pytest.raises(InvalidRequest, match="unknown datatype 'F32'"):
        codec.decode_inputs(request_with("x", "F32", [2], b""))
    with pytest.raises(InvalidRequest, match="negative dimension"):
        codec.decode_inputs(request_with("x", "FP32", [-1], b""))
    twice = request_with("x", "FP32", [1], b"\x00" * 4)
    twice.inputs.add(name="x", datatype="FP32", shape=[1])
    twice.raw_input_contents.append(b"\x00" * 4)
    with pytest.raises(InvalidRequest, match="input 'x' appears more than once"):
        codec.decode_inputs(twice)
    typed = pb.ModelInferRequest()
    typed.inputs.add(name="t", datatype="INT32", shape=[3]).contents.int_contents.extend([1, 2])
    with pytest.raises(InvalidRequest, match=r"contents\.int_contents has 2 elements, expected 3"):
        codec.decode_inputs(typed)


@pytest.mark.parametrize(("datatype", "sent"), [("FP32", 12), ("FP32", 9), ("INT64", 24), ("UINT8", 3)])
def test_an_oversized_raw_buffer_is_invalid_argument_naming_the_input_and_both_sizes(
    datatype: str, sent: int
) -> None:
    # Shape [2]: 8 bytes of FP32, 16 of INT64, 2 of UINT8. More than that is the client's mistake,
    # never INTERNAL (unchecked, numpy's frombuffer or reshape would raise a ValueError on it).
    expected = {"FP32": 8, "INT64": 16, "UINT8": 2}[datatype]
    with pytest.raises(InvalidRequest) as info:
        codec.decode_inputs(request_with("big", datatype, [2], b"\x01" * sent))
    assert str(info.value) == (
        f"input byte size mismatch for input 'big' for model ''. Expected {expected}, got {sent}; "
        f"raw_input_contents[0] for shape [2] of {datatype}"
    )
    assert status_for(info.value)[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_a_trailing_empty_bytes_element_is_decoded() -> None:
    items = [b"ab", b""]
    decoded = codec.decode_inputs(
        request_with("s", "BYTES", [1, 2], wire.pack_bytes(np.array(items, object)))
    )
    assert decoded["s"].shape == (1, 2)
    assert list(decoded["s"].reshape(-1)) == items


def signature(max_batch_size: int = 8) -> Signature:
    config = mc.ModelConfig(name="m", max_batch_size=max_batch_size)
    config.input.add(name="a", data_type=mc.TYPE_FP32, dims=[-1, 4])
    config.input.add(name="b", data_type=mc.TYPE_INT64, dims=[2])
    config.output.add(name="y", data_type=mc.TYPE_FP32, dims=[1])
    return Signature.from_config(config)


def test_signature_checks_names_types_shapes_and_rows() -> None:
    sig = signature()
    ok = {"a": np.zeros((3, 5, 4), np.float32), "b": np.zeros((3, 2), np.int64)}
    assert sig.check_inputs(ok) == 3
    missing = (
        "^expected 2 inputs but got 1 inputs for model 'm'. Got input\\(s\\) \\['a'\\], but missing "
        "required input\\(s\\) \\['b'\\]. Please provide all required input\\(s\\).$"
    )
    with pytest.raises(InvalidRequest, match=missing):
        sig.check_inputs({"a": ok["a"]})
    with pytest.raises(
        InvalidRequest, match=r"^unexpected inference input 'c' for model 'm'; its inputs: a, b$"
    ):
        sig.check_inputs({**ok, "c": ok["b"]})
    with pytest.raises(InvalidRequest, match="input 'b': datatype INT32 does not match the model's INT64"):
        sig.check_inputs({**ok, "b": np.zeros((3, 2), np.int32)})
    with pytest.raises(
        InvalidRequest,
        match=r"^unexpected shape for input 'a' for model 'm'. Expected \[-1,-1,4\], got \[3,5,3\].$",
    ):
        sig.check_inputs({**ok, "a": np.zeros((3, 5, 3), np.float32)})
    with pytest.raises(InvalidRequest, match="batch dimension 2 differs"):
        sig.check_inputs({**ok, "b": np.zeros((2, 2), np.int64)})
    with pytest.raises(
        InvalidRequest, match=r"^inference request batch-size must be <= 8 for 'm'; the request has 9 rows$"
    ):
        sig.check_inputs({"a": np.zeros((9, 1, 4), np.float32), "b": np.zeros((9, 2), np.int64)})
    with pytest.raises(InvalidRequest, match="0 rows"):
        sig.check_inputs({"a": np.zeros((0, 1, 4), np.float32), "b": np.zeros((0, 2), np.int64)})
    assert sig.check_outputs([]) == ["y"]
    with pytest.raises(InvalidRequest, match="unknown output 'z'"):
        sig.check_outputs(["z"])


def text_signature() -> Signature:
    config = mc.ModelConfig(name="m", max_batch_size=4)
    config.input.add(name="s", data_type=mc.TYPE_STRING, dims=[-1])
    config.output.add(name="n", data_type=mc.TYPE_INT64, dims=[1])
    return Signature.from_config(config)


def test_bytes_inputs_must_be_utf8_text() -> None:
    sig = text_signature()
    good = np.array([[b"plain", "é".encode(), b""]], dtype=object)
    assert sig.check_inputs({"s": good}) == 1
    bad = np.array([[b"plain", b"\xff\xfe"], [b"ok", b"\xc3"]], dtype=object)  # elements 1 and 3
    with pytest.raises(InvalidRequest, match="input 's': BYTES element 1 is not UTF-8 text"):
        sig.check_inputs({"s": bad})
    decoded = codec.decode_inputs(request_with("s", "BYTES", [1, 1], wire.pack_bytes(bad[1:, 1:])))
    with pytest.raises(InvalidRequest, match="input 's': BYTES element 0 is not UTF-8 text") as info:
        sig.check_inputs(decoded)
    assert status_for(info.value)[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_signature_without_batch_dimension() -> None:
    sig = signature(max_batch_size=0)
    assert sig.check_inputs({"a": np.zeros((5, 4), np.float32), "b": np.zeros(2, np.int64)}) == 1
    with pytest.raises(
        InvalidRequest,
        match=r"^unexpected shape for input 'b' for model 'm'\. Expected \[2\], got \[1,2\]\.$",
    ):
        sig.check_inputs({"a": np.zeros((5, 4), np.float32), "b": np.zeros((1, 2), np.int64)})


def test_controls() -> None:
    params = pb.ModelInferRequest().parameters
    assert parse_controls(params).timeout_s is None
    request = pb.ModelInferRequest()
    request.parameters["timeout"].int64_param = 2500
    request.parameters["priority"].uint64_param = 2
    request.parameters["something_else"].string_param = "ignored"
    controls = parse_controls(request.parameters)
    assert controls.timeout_s == pytest.approx(0.0025)
    assert controls.priority == 2
    request.parameters["priority"].string_param = "high"
    with pytest.raises(InvalidRequest, match="parameter 'priority' must be an integer"):
        parse_controls(request.parameters)
    seq = pb.ModelInferRequest()
    seq.parameters["sequence_start"].bool_param = False
    assert parse_controls(seq.parameters).priority == 0
    seq.parameters["sequence_start"].bool_param = True
    with pytest.raises(InvalidRequest, match="sequence_start"):
        parse_controls(seq.parameters)


@pytest.mark.parametrize("max_batch_size", [0, 4])
def test_a_variable_reshape_needs_rows_that_divide_evenly(max_batch_size: int) -> None:
    """dims [-1] with reshape [-1, 2]: 5 elements failed the whole batch INTERNAL in the run."""
    config = mc.ModelConfig(name="m", max_batch_size=max_batch_size)
    x = config.input.add(name="x", data_type=mc.TYPE_FP32, dims=[-1])
    x.reshape.shape.extend([-1, 2])
    config.output.add(name="y", data_type=mc.TYPE_FP32, dims=[-1])
    sig = Signature.from_config(config)
    rows = (1,) if max_batch_size else ()
    assert sig.check_inputs({"x": np.zeros((*rows, 6), np.float32)}) == 1
    with pytest.raises(
        InvalidRequest, match=r"^input 'x': 5 elements per row cannot take the model's reshape \[-1, 2\] "
    ) as info:
        sig.check_inputs({"x": np.zeros((*rows, 5), np.float32)})
    assert status_for(info.value)[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_latest_frame_wins_of_another_type_is_refused_on_a_unary_call_too() -> None:
    """A stream refused it; a unary call answered OK (the README says another type is refused)."""
    params = {"latest_frame_wins": pb.InferParameter(string_param="yes")}
    with pytest.raises(
        InvalidRequest, match="parameter 'latest_frame_wins' must be a bool, got string_param"
    ):
        parse_controls(params)
    assert parse_controls({"latest_frame_wins": pb.InferParameter(bool_param=True)}).priority == 0
