"""Request parameters where mutation testing showed rules untested: the classification extension
(server/protocol/classification.py) over several requested outputs, its messages and its ties, the
sequence parameters' empty values (server/protocol/sequence_params.py), a request's own
latest-frame-wins choice (server/protocol/controls.py), and optional inputs in the signature
(server/protocol/validate.py)."""

from __future__ import annotations

import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import model_config_pb2 as mc
from server.errors import InvalidRequest
from server.protocol.classification import classify, requested_classes, top_classes
from server.protocol.controls import latest_frame_wins
from server.protocol.sequence_params import parse_sequence, sequence_id
from server.protocol.validate import Signature
from tests.unit.test_classification import _signature


def test_every_requested_output_asking_for_classes_is_found() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.outputs.add(name="half")  # no classification: skipped, and the next still read
    request.outputs.add(name="probs").parameters["classification"].int64_param = 2
    request.outputs.add(name="other").parameters["classification"].uint64_param = 3
    assert requested_classes(request, _signature()) == {"probs": 2, "other": 3}


def test_a_class_count_with_no_value_says_so() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.outputs.add(name="probs").parameters["classification"].CopyFrom(pb.InferParameter())
    with pytest.raises(InvalidRequest) as refused:
        requested_classes(request, _signature())
    assert str(refused.value) == (
        "output 'probs': parameter 'classification' (the class count) must be an integer, got no value"
    )


def test_ties_among_many_classes_keep_the_lower_index_first() -> None:
    scores = np.zeros((2, 300), np.float32)  # long rows: an unstable sort reorders equal values
    scores[1, 250] = 1.0
    out = top_classes(scores, 4, [], batched=True)
    assert out.tolist() == [
        [b"0.000000:0", b"0.000000:1", b"0.000000:2", b"0.000000:3"],
        [b"1.000000:250", b"0.000000:0", b"0.000000:1", b"0.000000:2"],
    ]


def test_classify_without_labels_and_refusing_a_type_it_cannot_classify() -> None:
    outputs = {"probs": np.array([[0.25, 0.75]], np.float32), "text": np.array([[b"a"]], dtype=object)}
    assert classify(outputs, {"probs": 1}, {}, batched=True)["probs"].tolist() == [[b"0.750000:1"]]
    with pytest.raises(InvalidRequest) as refused:
        classify(outputs, {"text": 1}, {}, batched=True)
    assert str(refused.value) == "output 'text': class result not available for its type"


def test_a_sequence_id_with_no_value_says_so() -> None:
    with pytest.raises(InvalidRequest) as refused:
        sequence_id(pb.InferParameter())
    assert str(refused.value) == (
        "parameter 'sequence_id' must be an unsigned integer or a string, got nothing"
    )


@pytest.mark.parametrize("flag", ["sequence_start", "sequence_end"])
def test_a_sequence_flag_with_no_value_says_so(flag: str) -> None:
    # It had been read as false, while every other parameter with no value was refused.
    parameters = {"sequence_id": pb.InferParameter(uint64_param=5), flag: pb.InferParameter()}
    with pytest.raises(InvalidRequest) as refused:
        parse_sequence(parameters)
    assert str(refused.value) == f"parameter '{flag}' must be a bool, got nothing"


@pytest.mark.parametrize(
    ("parameter", "wanted"),
    [(None, None), (pb.InferParameter(bool_param=True), True), (pb.InferParameter(bool_param=False), False)],
)
def test_a_request_chooses_latest_frame_wins_or_leaves_it_to_the_model(
    parameter: pb.InferParameter | None, wanted: bool | None
) -> None:
    parameters = {} if parameter is None else {"latest_frame_wins": parameter}
    assert latest_frame_wins(parameters) is wanted


@pytest.mark.parametrize(
    ("parameter", "got"),
    [(pb.InferParameter(int64_param=1), "int64_param"), (pb.InferParameter(), "nothing")],
)
def test_latest_frame_wins_must_be_a_bool(parameter: pb.InferParameter, got: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        latest_frame_wins({"latest_frame_wins": parameter})
    assert str(refused.value) == f"parameter 'latest_frame_wins' must be a bool, got {got}"


def optional_first_signature() -> Signature:
    config = mc.ModelConfig(name="m", max_batch_size=4)
    config.input.add(name="bias", data_type=mc.TYPE_FP32, dims=[2], optional=True)
    config.input.add(name="x", data_type=mc.TYPE_FP32, dims=[2])
    config.output.add(name="y", data_type=mc.TYPE_FP32, dims=[2])
    return Signature.from_config(config)


def test_a_configs_optional_input_is_optional_in_the_signature() -> None:
    signature = optional_first_signature()
    assert signature.inputs["bias"].optional is True and signature.inputs["x"].optional is False
    assert signature.check_inputs({"x": np.zeros((3, 2), np.float32)}) == 3  # bias may be absent


def test_inputs_after_an_absent_optional_one_are_still_checked() -> None:
    with pytest.raises(InvalidRequest) as refused:
        optional_first_signature().check_inputs({"x": np.zeros((3, 2), np.int32)})
    assert str(refused.value) == "input 'x': datatype INT32 does not match the model's FP32"
