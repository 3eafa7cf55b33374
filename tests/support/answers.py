"""A unary ModelInfer's outcome as (status name, details), for tests comparing how two servers or
two states of one model answer the same request."""

from __future__ import annotations

import grpc

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc


def answer(stub: pb_grpc.GRPCInferenceServiceStub, request: pb.ModelInferRequest) -> tuple[str, str]:
    """("OK", "") or the refusal's status name and details."""
    try:
        stub.ModelInfer(request, timeout=60)
    except grpc.RpcError as refused:
        return refused.code().name, refused.details() or ""
    return "OK", ""
