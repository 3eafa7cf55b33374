"""server/protocol/validate.py where the whole-scope mutation run (2026-12-05) left survivors: a
request's declared datatypes checked before decoding, the fields of WrongDatatype and WrongShape (an
ensemble reads them to tell a reloaded step's misfit from a client's), the reshape check of a model
with max_batch_size 1, and the identity backend's BYTES taken as any bytes by check_texts.

Every model here is one the server loads (validate_config)."""

from __future__ import annotations

import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from server.errors import InvalidRequest, WrongDatatype, WrongShape
from server.models.config import parse_config, validate_config
from server.protocol.validate import Signature


def signature(max_batch_size: int, inputs: str, backend: str = "onnxruntime") -> Signature:
    text = (
        f'name: "m"\nbackend: "{backend}"\nmax_batch_size: {max_batch_size}\n'
        f"{inputs}\n"
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
    )
    config = parse_config(text, "m")
    validate_config(config, "m")  # a config the server loads
    return Signature.from_config(config)


TWO_INPUTS = (
    'input [ { name: "a" data_type: TYPE_INT32 dims: [ 2 ] }, '
    '{ name: "x" data_type: TYPE_FP32 dims: [ 2 ] } ]'
)


def declared(name: str, datatype: str) -> pb.ModelInferRequest.InferInputTensor:
    return pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=[1, 2])


def test_a_declared_datatype_other_than_the_models_is_refused_naming_input_and_both_datatypes() -> None:
    """The input's own spec and the declared datatype are both looked up: without either (None)
    nothing is refused; the refusal's fields are the input's name and the two wire datatypes."""
    with pytest.raises(WrongDatatype) as refused:
        signature(4, TWO_INPUTS).check_declared_datatypes([declared("a", "INT32"), declared("x", "FP64")])
    assert str(refused.value) == "input 'x': datatype FP64 does not match the model's FP32"
    assert (refused.value.name, refused.value.sent, refused.value.model) == ("x", "FP64", "FP32")


def test_declared_datatypes_left_to_later_checks_pass() -> None:
    """The model's own datatype, BYTES (its elements are counted first, as Triton does), a datatype
    the server does not know and an input the model does not have are not this check's to refuse."""
    signature(4, TWO_INPUTS).check_declared_datatypes(
        [declared("a", "INT32"), declared("x", "BYTES"), declared("x", "NOPE"), declared("b", "FP64")]
    )


def test_an_input_of_the_wrong_numpy_type_names_the_input_and_both_datatypes() -> None:
    """check_inputs' refusal of a decoded array's datatype carries the same fields."""
    inputs = {"a": np.zeros((1, 2), np.int32), "x": np.zeros((1, 2), np.float64)}
    with pytest.raises(WrongDatatype) as refused:
        signature(4, TWO_INPUTS).check_inputs(inputs)
    assert str(refused.value) == "input 'x': datatype FP64 does not match the model's FP32"
    assert (refused.value.name, refused.value.sent, refused.value.model) == ("x", "FP64", "FP32")


def test_a_wrong_shape_without_a_batch_dimension_names_its_input() -> None:
    """A model with max_batch_size 0 refuses a shape its dims do not take: WrongShape's `name`
    (ensemble_fit reads it) is the input's, as for a batching model."""
    with pytest.raises(WrongShape) as refused:
        signature(0, TWO_INPUTS).check_inputs({"a": np.zeros(2, np.int32), "x": np.zeros(3, np.float32)})
    assert refused.value.name == "x"
    assert str(refused.value) == "unexpected shape for input 'x' for model 'm'. Expected [2], got [3]."


RESHAPED = 'input [ { name: "x" data_type: TYPE_FP32 dims: [ 8 ] reshape { shape: [ 2, 4 ] } } ]'


def test_max_batch_size_1_checks_the_reshape_on_a_row_without_its_batch_dimension() -> None:
    """With max_batch_size 1 the first dimension is still the batch: two rows of 8 elements each
    fill the reshape [2, 4], and the refusal is for the rows (the whole 16 elements taken as one row
    would be refused as not fitting the reshape)."""
    sig = signature(1, RESHAPED)
    assert sig.check_inputs({"x": np.zeros((1, 8), np.float32)}) == 1
    with pytest.raises(InvalidRequest) as refused:
        sig.check_inputs({"x": np.zeros((2, 8), np.float32)})
    assert str(refused.value) == "inference request batch-size must be <= 1 for 'm'; the request has 2 rows"


BYTES_INPUT = 'input [ { name: "s" data_type: TYPE_STRING dims: [ 1 ] } ]'


def test_check_texts_takes_any_bytes_for_the_identity_backend_and_only_text_for_onnxruntime() -> None:
    """The identity backend passes BYTES through (text_bytes False): bytes that are not UTF-8 are
    taken, whatever the array's kind; onnxruntime's string tensors hold text, so they are refused."""
    array = np.array([[b"\xff"]], dtype=object)
    signature(4, BYTES_INPUT, backend="identity").check_texts({"s": array})
    with pytest.raises(InvalidRequest) as refused:
        signature(4, BYTES_INPUT).check_texts({"s": array})
    assert str(refused.value) == "input 's': BYTES element 0 is not UTF-8 text"
