"""The client's exceptions: one class per status a caller handles differently, one mapping function.

Unary calls fail with a gRPC status; stream frames fail with `error_message = "<STATUS>: <message>"`.
Both become the same classes here, so callers write one `except` whatever the transport.
"""

from __future__ import annotations

import contextlib
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2


class SluicewayError(Exception):
    """Base of every error a call returns. `code` is the gRPC status, `message` the server's text."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        code: grpc.StatusCode | None = None,
        request_id: str | None = None,
        retry_after_s: float | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        # Set for stream frames, so a failed frame can be matched to what was sent.
        self.request_id = request_id
        # The server's google.rpc.RetryInfo hint (an overload refusal): when to try again.
        self.retry_after_s = retry_after_s
        # The server's google.rpc.ErrorInfo reason, e.g. RUN_TIMED_OUT (see NOT_RETRIED).
        self.reason = reason

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
    """RESOURCE_EXHAUSTED: the model's queue (or the server) is full; or UNAVAILABLE "Exceeds
    maximum queue size", Triton's answer for a queue at its config's max_queue_size (the endpoint
    is well: not health-checked as an Unavailable's would be). Retried with backoff."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class MessageTooLarge(SluicewayError):
    """RESOURCE_EXHAUSTED for a message over a size limit: this client's
    `ChannelOptions.max_message_bytes`, or the server's. Never retried: the same message is refused
    again, and an answer too large to receive was computed already (as Overloaded, one call ran the
    model six times). Send less, or raise the limit."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(SluicewayError):
    """Endpoint down, shutting down, or the model not ready. Retried, on another endpoint if any."""

    code = grpc.StatusCode.UNAVAILABLE


class InternalError(SluicewayError):
    """The server failed unexpectedly; its log has the details."""

    code = grpc.StatusCode.INTERNAL


class FrameDropped(SluicewayError):
    """A stream frame the server dropped uncomputed: a newer frame of its stream superseded it
    (latest-frame-wins). Its result has `dropped` set and no outputs; `unwrap()` raises this. Not
    an RPC status: never retried (the newer frame is the one that counts)."""

    code = grpc.StatusCode.CANCELLED


ERROR_BY_CODE: dict[grpc.StatusCode, type[SluicewayError]] = {
    cls.code: cls
    for cls in (NotFound, InvalidArgument, DeadlineExceeded, Overloaded, Unavailable, InternalError)
}


# Triton's words (and ours) for a request refused at a model's max_queue_size, answered UNAVAILABLE.
QUEUE_SIZE_REACHED = "Exceeds maximum queue size"


def error_for(
    code: grpc.StatusCode,
    message: str,
    request_id: str | None = None,
    retry_after_s: float | None = None,
    reason: str | None = None,
) -> SluicewayError:
    """The one mapping: a status code and message -> the matching exception (the base for others)."""
    if code == grpc.StatusCode.UNAVAILABLE and QUEUE_SIZE_REACHED in message:
        return Overloaded(message, code, request_id, retry_after_s, reason)
    cls = ERROR_BY_CODE.get(code)
    if cls is None:
        return SluicewayError(message, code, request_id, retry_after_s, reason)
    return cls(message, request_id=request_id, retry_after_s=retry_after_s, reason=reason)


# ErrorInfo reasons of answers never to send again. RUN_TIMED_OUT: the request's run outlived the
# model's run timeout, so it was computing and may hang whichever instance it reaches (a retry on
# every endpoint killed an instance on each). OUTGROWS_MEMORY_BUDGET: the model needs more than
# the server's whole memory budget, so every retry is refused alike. SEQUENCE_RETIRED: a sequence's
# request queued when the sequence's model version was unloaded or replaced, not run: the sequence's
# state went with that version, so the same request anywhere is refused as not live (INVALID_ARGUMENT
# "must specify the START flag"); the sequence must be started again.
NOT_RETRIED = frozenset({"RUN_TIMED_OUT", "OUTGROWS_MEMORY_BUDGET", "SEQUENCE_RETIRED"})


def rich_details(call: Any) -> tuple[float | None, str | None]:
    """The RetryInfo delay and the ErrorInfo reason in a failed call's rich status
    (grpc-status-details-bin), each None when absent."""
    metadata = call.trailing_metadata() if callable(getattr(call, "trailing_metadata", None)) else None
    details = []
    for key, value in metadata or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            with contextlib.suppress(DecodeError):
                details = list(status_pb2.Status.FromString(value).details)
            break
    delay: float | None = None
    reason: str | None = None
    retry, error = error_details_pb2.RetryInfo(), error_details_pb2.ErrorInfo()
    for detail in details:
        if detail.Unpack(retry):
            delay = float(retry.retry_delay.ToNanoseconds()) / 1e9
        elif detail.Unpack(error):
            reason = str(error.reason)
    return delay, reason


# gRPC's words for a message over a size limit, on either side ("Received message larger than max
# (9 vs. 8)", "Sent message larger than max", "grpc: received message larger than max").
_TOO_LARGE = "message larger than max"


def from_rpc_error(exc: grpc.RpcError) -> SluicewayError:
    """A failed unary call (sync or aio) as our exception; keeps the original as __cause__."""
    call: Any = exc  # grpc.RpcError raised by calls also implements grpc.Call (code, details)
    code = call.code() if callable(getattr(call, "code", None)) else None
    details = str(call.details() if callable(getattr(call, "details", None)) else None or exc)
    status = code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
    error: SluicewayError
    if status == grpc.StatusCode.RESOURCE_EXHAUSTED and _TOO_LARGE in details.lower():
        error = MessageTooLarge(details)
    else:
        delay, reason = rich_details(call)
        error = error_for(status, details, retry_after_s=delay, reason=reason)
    error.__cause__ = exc
    return error


_CODE_BY_NAME = {code.name: code for code in grpc.StatusCode}


def from_stream_message(text: str, request_id: str | None = None) -> SluicewayError:
    """A stream frame's `"<STATUS>: <message>"` as the same exception a unary call would raise."""
    name, sep, message = text.partition(": ")
    code = _CODE_BY_NAME.get(name) if sep else None
    if code is None:  # not our format (another server): keep the whole text
        return SluicewayError(text, grpc.StatusCode.UNKNOWN, request_id)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and _TOO_LARGE in message.lower():
        return MessageTooLarge(message, request_id=request_id)
    return error_for(code, message, request_id)
