"""A request naming more inputs or outputs than its model has is refused from its first few names
(request_checks.check_counts), with the fault the full walk would name, before any walk over them:
100,000 requested outputs in a frame had cost 67 ms of the event loop in the shared-memory lookup."""

from __future__ import annotations

import pytest

from protos import grpc_service_pb2 as pb
from server import datatypes
from server.errors import InvalidRequest
from server.protocol.request_checks import check_counts
from server.protocol.validate import Signature, TensorSpec

FP32 = datatypes.BY_WIRE["FP32"]
SIGNATURE = Signature(
    model="m",
    max_batch_size=8,
    inputs={"a": TensorSpec("a", FP32, (4,)), "b": TensorSpec("b", FP32, (4,))},
    outputs={"y": TensorSpec("y", FP32, (2,))},
)


def _request(inputs: list[str], outputs: list[str]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    for name in inputs:
        request.inputs.add(name=name, datatype="FP32", shape=[1, 4])
    for name in outputs:
        request.outputs.add(name=name)
    return request


@pytest.mark.parametrize(
    ("inputs", "outputs", "said"),
    [
        (["a", "b"], ["y", "y"], "output 'y' is requested more than once"),
        (["a", "b"], ["y", "z"], "unknown output 'z' requested from model 'm' (outputs: y)"),
        (["a", "b", "a"], [], "input 'a' appears more than once"),
        (["a", "b", "c"], [], "unexpected inference input 'c' for model 'm'"),
        (["a", "b"], ["y"] * 100_000, "output 'y' is requested more than once"),
    ],
)
def test_more_names_than_the_model_has_are_refused_naming_the_fault(
    inputs: list[str], outputs: list[str], said: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_counts(SIGNATURE, _request(inputs, outputs))
    assert said in str(caught.value)


@pytest.mark.parametrize(("inputs", "outputs"), [(["a", "b"], ["y"]), (["a"], []), (["a", "z"], ["q"])])
def test_no_more_names_than_the_model_has_are_left_to_the_full_checks(
    inputs: list[str], outputs: list[str]
) -> None:
    check_counts(SIGNATURE, _request(inputs, outputs))  # an unknown name among few: checked later
