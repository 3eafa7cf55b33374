"""A stream's own error frames: for a message refused before it was admitted (malformed, over
the size limit, read while the server drains) or a request that failed; and Triton's
`triton_grpc_error` header, under which a stream's first error frame ends the call with its status
instead."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import grpc

from protos import grpc_service_pb2 as pb
from server.errors import status_for
from server.observability.logs import failure_fields, failure_message
from server.protocol.answers import Status
from server.protocol.frame_size import Oversized
from server.protocol.malformed import Malformed
from server.protocol.stream_bytes import Read

log = logging.getLogger("server.protocol.stream")  # its failure lines, as when they were logged there

Response = pb.ModelStreamInferResponse


def shutting_down(request: Read) -> Response:
    """The answer to a message read while the server drains: stop sending on this stream."""
    message = "UNAVAILABLE: server is shutting down: request not admitted; stop sending on this stream"
    return refusal(message, request.head if isinstance(request, (Oversized, Malformed)) else request)


def refusal(message: str, request: pb.ModelInferRequest | None) -> Response:
    """An error frame for a request not admitted, with its model, version and id when known."""
    if request is None:
        return Response(error_message=message)
    return Response(
        error_message=message,
        infer_response=pb.ModelInferResponse(
            model_name=request.model_name, model_version=request.model_version, id=request.id
        ),
    )


def failure_frame(request: pb.ModelInferRequest, exc: Exception) -> Response:
    """A stream answers a failed request with an error message and its id, and keeps going."""
    code, message, expected = status_for(exc)
    if not expected:
        fields = failure_fields(request, exc)
        log.error(failure_message("stream request failed", fields), exc_info=exc, extra=fields)
    return refusal(f"{code.name}: {message}", request)


# Triton's header (its clients' `headers={"triton_grpc_error": "true"}`): the stream's first error
# ends the call with that error's status, as a unary call's would, and nothing after it is answered.
GRPC_ERROR_HEADER = "triton_grpc_error"


def wants_grpc_error(metadata: Sequence[Any] | None) -> bool:
    """Whether the call's metadata sets `triton_grpc_error: true` (any case, as Triton reads it)."""
    return any(key == GRPC_ERROR_HEADER and str(value).lower() == "true" for key, value in metadata or ())


def frame_status(error_message: str) -> Status:
    """The status an error frame's `"<STATUS>: <message>"` says."""
    name, _, message = error_message.partition(": ")
    code = getattr(grpc.StatusCode, name, None)
    if not isinstance(code, grpc.StatusCode):
        return Status(grpc.StatusCode.UNKNOWN, error_message)
    return Status(code, message)
