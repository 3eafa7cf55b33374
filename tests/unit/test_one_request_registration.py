"""How add_service registers methods (server/protocol/malformed.py): every method of one request as
client-streaming, so that it reads its request itself and can answer a call that has none."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from protos import grpc_service_pb2 as pb
from server.protocol.malformed import _refusing, add_service


class RecordingServer:
    """Just what add_service calls on a grpc.aio server."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, _: object) -> None:
        pass

    def add_registered_method_handlers(self, _: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.handlers.update(handlers)


class AnyServicer:
    def __getattr__(self, name: str) -> Any:
        async def method(request: object, context: object) -> None:
            return None

        return method


@pytest.mark.parametrize("service", [pb.DESCRIPTOR.services_by_name["GRPCInferenceService"],
                                     health_pb2.DESCRIPTOR.services_by_name["Health"]])  # fmt: skip
def test_every_method_reads_its_requests_and_answers_as_declared(service: Any) -> None:
    server = RecordingServer()
    add_service(service, AnyServicer(), server)  # type: ignore[arg-type]
    assert set(server.handlers) == {method.name for method in service.methods}
    for method in service.methods:
        handler = server.handlers[method.name]
        assert handler.request_streaming, method.name  # one request or many: read by the handler
        assert handler.response_streaming == method.server_streaming, method.name


def test_kinds_it_cannot_serve_are_refused_at_registration() -> None:
    async def yields(request: object, context: object) -> AsyncIterator[object]:
        yield request

    async def answers(requests: object, context: object) -> None:
        return None

    with pytest.raises(ValueError, match="must write its answers"):
        _refusing("unary_stream", yields)
    with pytest.raises(ValueError, match="client-streaming"):
        _refusing("stream_unary", answers)
