"""Every exception the server or batcher raises on purpose maps to a precise gRPC status."""

from __future__ import annotations

import grpc

from batcher import errors as batcher_errors
from server import errors


def _subclasses(base: type) -> set[type]:
    found = set()
    for sub in base.__subclasses__():
        found |= {sub, *_subclasses(sub)}
    return found


def test_every_exception_is_mapped() -> None:
    for cls in _subclasses(errors.ServiceError) | _subclasses(batcher_errors.BatcherError):
        code, message, expected = errors.status_for(cls("boom"))
        assert expected, f"{cls.__name__} has no status in STATUS_BY_EXCEPTION"
        assert code not in (grpc.StatusCode.OK, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
        assert message == "boom"


def test_expected_codes() -> None:
    assert errors.status_for(errors.ModelNotFound("x"))[0] == grpc.StatusCode.NOT_FOUND
    assert errors.status_for(batcher_errors.QueueFull("x"))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert errors.status_for(batcher_errors.DeadlineExceeded("x"))[0] == grpc.StatusCode.DEADLINE_EXCEEDED


def test_unexpected_errors_answer_internal_without_details() -> None:
    code, message, expected = errors.status_for(KeyError("secret path /etc/x"))
    assert code == grpc.StatusCode.INTERNAL and not expected
    assert "secret" not in message
