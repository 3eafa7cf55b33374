"""A stream's own error frames: for a message refused before it was admitted (malformed, over
the size limit, read while the server drains), and whether a frame asks for the final flag."""

from __future__ import annotations

from protos import grpc_service_pb2 as pb
from server.protocol.answer_checks import wants_final_flag
from server.protocol.frame_size import Oversized
from server.protocol.malformed import Malformed
from server.protocol.stream_bytes import Read

Response = pb.ModelStreamInferResponse


def wants_final_flag_of(request: Read | None) -> bool:
    """Whether the request a stream answers asked for Triton's final-response flag."""
    if isinstance(request, (Oversized, Malformed)):
        request = request.head
    return isinstance(request, pb.ModelInferRequest) and wants_final_flag(request)


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
