"""The sequence parameters of a request, as Triton reads them (server/protocol/sequence_params.py)."""

from __future__ import annotations

import pytest

from protos import grpc_service_pb2 as pb
from server.errors import InvalidRequest
from server.protocol.sequence_params import SequenceParams, parse_sequence


def params(**values: object) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest()
    for name, (kind, value) in values.items():
        setattr(request.parameters[name], kind, value)
    return request


@pytest.mark.parametrize(
    ("sid", "expected"),
    [(("int64_param", 7), 7), (("uint64_param", 2**64 - 1), 2**64 - 1), (("string_param", "cam-1"), "cam-1")],
)
def test_an_id_is_an_unsigned_integer_or_a_string(sid: tuple[str, object], expected: object) -> None:
    request = params(sequence_id=sid, sequence_start=("bool_param", True))
    assert parse_sequence(request.parameters) == SequenceParams(expected, True, False)  # type: ignore[arg-type]


def test_zero_and_empty_mean_no_sequence_and_then_flags_are_refused() -> None:
    assert parse_sequence(params(sequence_id=("int64_param", 0)).parameters) is None
    assert parse_sequence(params(sequence_id=("string_param", "")).parameters) is None
    assert parse_sequence(params(sequence_end=("bool_param", False)).parameters) is None
    with pytest.raises(InvalidRequest, match="parameter 'sequence_end' is set but 'sequence_id' names no"):
        parse_sequence(params(sequence_end=("bool_param", True)).parameters)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"sequence_id": ("int64_param", -3)}, "parameter 'sequence_id' must be >= 0, got -3"),
        (
            {"sequence_id": ("bool_param", True)},
            "'sequence_id' must be an unsigned integer or a string, got bool",
        ),
        (
            {"sequence_id": ("int64_param", 1), "sequence_start": ("int64_param", 1)},
            "'sequence_start' must be a bool",
        ),
    ],
)
def test_bad_values_are_refused_naming_the_parameter(
    values: dict[str, tuple[str, object]], message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_sequence(params(**values).parameters)
