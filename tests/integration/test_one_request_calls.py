"""Every method that takes one request answers a call that half-closes without it.

grpc.aio's unary path returned without any status for such a call, before a handler ran, so the
caller waited for its own deadline (no deadline: forever). The methods are registered as
client-streaming and read their request themselves (server/protocol/malformed.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients import Client
from protos import admin_pb2 as apb
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.raw_http2 import grpc_frame, raw_call
from tests.support.server_process import ServerProcess

INVALID_ARGUMENT = 3
NO_MESSAGE_SAID = "the call carried no request message"
SERVICES: tuple[ServiceDescriptor, ...] = (
    pb.DESCRIPTOR.services_by_name["GRPCInferenceService"],
    apb.DESCRIPTOR.services_by_name["Admin"],
    health_pb2.DESCRIPTOR.services_by_name["Health"],
)
ONE_REQUEST_METHODS = [
    (f"/{service.full_name}/{method.name}", method.server_streaming)
    for service in SERVICES
    for method in service.methods
    if not method.client_streaming
]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess() as running:
        yield running


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address) as opened:
        yield opened


def _mlp_request() -> bytes:
    request = pb.ModelInferRequest(model_name="mlp", id="raw")
    request.inputs.add(name="features", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(np.ones((1, 64), np.float32).tobytes())
    return request.SerializeToString()


def _served(server: ServerProcess) -> None:
    features = np.ones((2, 64), np.float32)
    assert Client(server.address).infer("mlp", {"features": features})
    with triton.InferenceServerClient(server.address) as tc:
        assert tc.is_server_live()


def test_the_methods_checked_are_every_one_request_method_served() -> None:
    # ModelInfer, ServerLive, the Admin service's, health's Check and Watch: none was left out.
    paths = [path for path, _ in ONE_REQUEST_METHODS]
    assert "/inference.GRPCInferenceService/ModelInfer" in paths
    assert "/grpc.health.v1.Health/Watch" in paths
    assert len(paths) >= 16


@pytest.mark.parametrize(("path", "streamed"), ONE_REQUEST_METHODS, ids=[p for p, _ in ONE_REQUEST_METHODS])
def test_a_call_with_no_request_message_is_invalid_argument(
    channel: grpc.Channel, path: str, streamed: bool
) -> None:
    no_bytes = {"request_serializer": bytes, "response_deserializer": bytes}
    with pytest.raises(grpc.RpcError) as caught:
        if streamed:
            list(channel.stream_stream(path, **no_bytes)(iter([]), timeout=30))
        else:
            channel.stream_unary(path, **no_bytes)(iter([]), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert NO_MESSAGE_SAID in (caught.value.details() or "")


def test_a_raw_call_with_no_message_or_a_truncated_one_is_answered(server: ServerProcess) -> None:
    path = "/inference.GRPCInferenceService/ModelInfer"
    served = raw_call(server.address, path, grpc_frame(_mlp_request()))
    assert served.grpc_status == 0, served  # the raw client itself works
    empty = raw_call(server.address, path, b"")
    assert empty.grpc_status == INVALID_ARGUMENT and NO_MESSAGE_SAID in empty.grpc_message, empty
    message = _mlp_request()
    truncated = raw_call(server.address, path, grpc_frame(message, declared_length=len(message) + 100))
    assert not truncated.timed_out and truncated.grpc_status == INVALID_ARGUMENT, truncated
    _served(server)


def test_a_request_whose_caller_never_half_closes_is_served(server: ServerProcess) -> None:
    # The message is read, and answered, without waiting for the end of the call's requests.
    path = "/inference.GRPCInferenceService/ModelInfer"
    answer = raw_call(server.address, path, grpc_frame(_mlp_request()), end_stream=False)
    assert answer.grpc_status == 0, answer


def test_the_server_serves_on_after_many_calls_without_a_message(
    server: ServerProcess, channel: grpc.Channel
) -> None:
    infer = channel.stream_unary(
        "/inference.GRPCInferenceService/ModelInfer", request_serializer=bytes, response_deserializer=bytes
    )
    futures = [infer.future(iter([]), timeout=30) for _ in range(200)]
    codes = [future.exception().code() for future in futures]  # type: ignore[union-attr]
    assert codes == [grpc.StatusCode.INVALID_ARGUMENT] * 200
    _served(server)


def test_a_watch_with_its_request_streams_the_servers_status(channel: grpc.Channel) -> None:
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()


def test_calls_without_a_message_and_without_a_deadline_hold_no_slot() -> None:
    # Unanswered, each held one of max_concurrent_rpcs until its client went away: 20 of them on a
    # server allowing 16 had every other call refused "Concurrent RPC limit exceeded!" (4,500 from
    # one client did so at the default 4,096).
    limited = ServerProcess("--max-concurrent-rpcs", "16")
    with limited as server, grpc.insecure_channel(server.address) as chan:
        path = "/inference.GRPCInferenceService/ModelInfer"
        infer = chan.stream_unary(path, request_serializer=bytes, response_deserializer=bytes)
        # More than the 16 slots, fewer than grpc core's backlog of calls not yet taken up (twice
        # the slots, 32): past it core answers CANCELLED itself, as 40 at once did on a loaded
        # machine (8 of them, in a full run on 3.10).
        futures = [infer.future(iter([])) for _ in range(30)]  # no deadline: only an answer ends them
        try:
            codes = [future.exception(timeout=30).code() for future in futures]  # type: ignore[union-attr]
        finally:
            for future in futures:
                future.cancel()
        assert codes == [grpc.StatusCode.INVALID_ARGUMENT] * 30
        stub = pb_grpc.GRPCInferenceServiceStub(chan)
        for _ in range(20):  # more than the limit, one at a time: every one finds room
            assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
