"""The client's exceptions: one class per status a caller handles differently, one mapping function.

Unary calls fail with a gRPC status; stream frames fail with `error_message = "<STATUS>: <message>"`.
Both become the same classes here, so callers write one `except` whatever the transport.
"""

from __future__ import annotations

from typing import Any

import grpc


class SluicewayError(Exception):
    """Base of every error a call returns. `code` is the gRPC status, `message` the server's text."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self, message: str, code: grpc.StatusCode | None = None, request_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        # Set for stream frames, so a failed frame can be matched to what was sent.
        self.request_id = request_id

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class NotFound(SluicewayError):
    """Unknown model or version. Never retried."""

    code = grpc.StatusCode.NOT_FOUND


class InvalidArgument(SluicewayError):
    """The request does not fit the model (names, datatypes, shapes, parameters). Never retried."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(SluicewayError):
    """The call's deadline passed (client side or in the server's queue). Never retried."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Overloaded(SluicewayError):
    """RESOURCE_EXHAUSTED: the model's queue (or the server) is full. Retried with backoff."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(SluicewayError):
    """Endpoint down, shutting down, or the model not ready. Retried, on another endpoint if any."""

    code = grpc.StatusCode.UNAVAILABLE


class InternalError(SluicewayError):
    """The server failed unexpectedly; its log has the details."""

    code = grpc.StatusCode.INTERNAL


ERROR_BY_CODE: dict[grpc.StatusCode, type[SluicewayError]] = {
    cls.code: cls
    for cls in (NotFound, InvalidArgument, DeadlineExceeded, Overloaded, Unavailable, InternalError)
}


def error_for(code: grpc.StatusCode, message: str, request_id: str | None = None) -> SluicewayError:
    """The one mapping: a status code and message -> the matching exception (the base for others)."""
    cls = ERROR_BY_CODE.get(code)
    if cls is None:
        return SluicewayError(message, code, request_id)
    return cls(message, request_id=request_id)


def from_rpc_error(exc: grpc.RpcError) -> SluicewayError:
    """A failed unary call (sync or aio) as our exception; keeps the original as __cause__."""
    call: Any = exc  # grpc.RpcError raised by calls also implements grpc.Call (code, details)
    code = call.code() if callable(getattr(call, "code", None)) else None
    details = call.details() if callable(getattr(call, "details", None)) else None
    error = error_for(
        code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN, str(details or exc)
    )
    error.__cause__ = exc
    return error


_CODE_BY_NAME = {code.name: code for code in grpc.StatusCode}


def from_stream_message(text: str, request_id: str | None = None) -> SluicewayError:
    """A stream frame's `"<STATUS>: <message>"` as the same exception a unary call would raise."""
    name, sep, message = text.partition(": ")
    code = _CODE_BY_NAME.get(name) if sep else None
    if code is None:  # not our format (another server): keep the whole text
        return SluicewayError(text, grpc.StatusCode.UNKNOWN, request_id)
    return error_for(code, message, request_id)
