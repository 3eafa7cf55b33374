"""Per-request controls pinned where mutation testing (scripts/mutation.sh) found them untested:
zero as "none", the unit of `timeout`, and what each refusal says."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from protos import grpc_service_pb2 as pb
from server.errors import InvalidRequest
from server.protocol.controls import Controls, parse_controls
from server.protocol.sequence_params import SequenceParams


def params(**ints: int) -> Mapping[str, pb.InferParameter]:
    request = pb.ModelInferRequest()
    for name, value in ints.items():
        request.parameters[name].int64_param = value
    parameters: Mapping[str, pb.InferParameter] = request.parameters
    return parameters


def test_zero_timeout_and_zero_priority_mean_none_and_default() -> None:
    assert parse_controls(params(timeout=0, priority=0)) == Controls(timeout_s=None, priority=0)


def test_timeout_is_in_microseconds() -> None:
    assert parse_controls(params(timeout=1)).timeout_s == 1e-6
    assert parse_controls(params(timeout=1_000_000)).timeout_s == 1.0


def test_without_a_timeout_there_is_none() -> None:
    assert parse_controls(params(priority=2)).timeout_s is None


def test_negative_values_are_refused_with_the_value() -> None:
    with pytest.raises(InvalidRequest, match=r"^parameter 'timeout' must be >= 0 microseconds, got -5$"):
        parse_controls(params(timeout=-5))
    with pytest.raises(InvalidRequest, match=r"^parameter 'priority' must be >= 0, got -1$"):
        parse_controls(params(priority=-1))


def test_a_non_integer_timeout_names_the_parameter_and_what_came() -> None:
    request = pb.ModelInferRequest()
    request.parameters["timeout"].string_param = "soon"
    with pytest.raises(InvalidRequest, match=r"^parameter 'timeout' must be an integer, got string_param$"):
        parse_controls(request.parameters)
    empty = pb.ModelInferRequest()
    empty.parameters["timeout"].CopyFrom(pb.InferParameter())
    with pytest.raises(InvalidRequest, match=r"must be an integer, got nothing$"):
        parse_controls(empty.parameters)


def test_a_sequence_id_of_text_zero_is_a_string_id_and_integer_zero_is_none() -> None:
    # Triton: only 0 and "" mean "no sequence"; the text "0" is a string correlation id.
    request = pb.ModelInferRequest()
    request.parameters["sequence_id"].string_param = "0"
    assert parse_controls(request.parameters) == Controls(sequence=SequenceParams("0", False, False))
    request.parameters["sequence_id"].int64_param = 0
    assert parse_controls(request.parameters) == Controls()
