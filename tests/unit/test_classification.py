"""The classification extension's strings and its checks of the requested class count."""

from __future__ import annotations

import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import model_config_pb2 as mc
from server.errors import InvalidRequest
from server.protocol.classification import classify, requested_classes, top_classes
from server.protocol.validate import Signature


def _signature() -> Signature:
    config = mc.ModelConfig(name="m", max_batch_size=4)
    config.input.add(name="x", data_type=mc.TYPE_FP32, dims=[3])
    config.output.add(name="probs", data_type=mc.TYPE_FP32, dims=[4])
    config.output.add(name="half", data_type=mc.TYPE_FP16, dims=[4])
    config.output.add(name="text", data_type=mc.TYPE_STRING, dims=[1])
    return Signature.from_config(config)


def test_fp32_rows_give_top_k_as_value_index_label_in_descending_order() -> None:
    scores = np.array([[0.1, 0.7, 0.2, 0.7], [3.0, 1.0, 2.0, 0.5]], np.float32)
    out = top_classes(scores, 3, ["a", "b", "c", "d"], batched=True)
    assert out.shape == (2, 3)
    assert out.tolist() == [
        [b"0.700000:1:b", b"0.700000:3:d", b"0.200000:2:c"],  # ties: the lower index first
        [b"3.000000:0:a", b"2.000000:2:c", b"1.000000:1:b"],
    ]


def test_labels_missing_or_short_leave_value_index_and_integers_print_as_integers() -> None:
    counts = np.array([[5, 9, 1]], np.uint8)
    assert top_classes(counts, 2, [], batched=True).tolist() == [[b"9:1", b"5:0"]]
    assert top_classes(counts, 2, ["zero"], batched=True).tolist() == [[b"9:1", b"5:0:zero"]]


def test_more_classes_than_elements_returns_them_all_and_unbatched_is_one_row() -> None:
    values = np.array([0.5, 1.5], np.float64)
    assert top_classes(values, 10, [], batched=False).tolist() == [b"1.500000:1", b"0.500000:0"]


def test_rows_compete_over_every_element_of_a_row() -> None:
    scores = np.array([[[0.1], [0.9]], [[0.8], [0.2]]], np.float32)  # [2, 2, 1]: a reshaped output
    assert top_classes(scores, 1, [], batched=True).tolist() == [[b"0.900000:1"], [b"0.800000:0"]]


def test_classify_replaces_only_the_named_outputs() -> None:
    outputs = {"probs": np.array([[0.0, 1.0]], np.float32), "other": np.ones((1, 2), np.float32)}
    result = classify(outputs, {"probs": 1}, {"probs": ["no", "yes"]}, batched=True)
    assert result["probs"].tolist() == [[b"1.000000:1:yes"]]
    assert result["other"] is outputs["other"]


def _request(name: str, **value: object) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    param = request.outputs.add(name=name).parameters["classification"]
    for field, v in value.items():
        setattr(param, field, v)
    return request


def test_requested_class_counts_are_read_from_the_output_parameter() -> None:
    assert requested_classes(pb.ModelInferRequest(model_name="m"), _signature()) is None
    assert requested_classes(_request("probs", int64_param=5), _signature()) == {"probs": 5}
    assert requested_classes(_request("probs", uint64_param=2), _signature()) == {"probs": 2}


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "probs",
            {"int64_param": 0},
            "output 'probs': parameter 'classification' .* must be positive, got 0",
        ),
        ("probs", {"int64_param": -3}, "must be positive, got -3"),
        ("probs", {"string_param": "3"}, "must be an integer, got string_param"),
        ("probs", {"bool_param": True}, "must be an integer, got bool_param"),
        ("half", {"int64_param": 1}, "unsupported type 'FP16'"),
        ("text", {"int64_param": 1}, "unsupported type 'BYTES'"),
    ],
)
def test_bad_class_counts_are_invalid_requests_naming_the_parameter(
    name: str, value: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        requested_classes(_request(name, **value), _signature())
