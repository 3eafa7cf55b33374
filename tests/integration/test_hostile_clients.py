"""A hostile or careless client over a real server: stream caps, idle streams, unparseable
messages, names that cannot be models, lenient versions and ignored parameters.

Each test reproduces a defect the hardening issue named against the server before it was fixed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.server_process import ServerProcess

PER_CONNECTION = 3
PER_PEER = 5
IDLE_S = 0.5


def _mlp(rid: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="mlp", id=rid)
    request.inputs.add(name="features", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(np.ones((1, 64), np.float32).tobytes())
    return request


@pytest.fixture(scope="module")
def limited_server() -> Iterator[ServerProcess]:
    args = [
        "--max-streams-per-connection",
        str(PER_CONNECTION),
        "--max-streams-per-peer",
        str(PER_PEER),
        "--max-streams",
        "100",
        *("--model-control-mode", "explicit", "--load-model", "*"),  # load/unload RPCs allowed
    ]
    with ServerProcess(*args) as server:
        yield server


class OpenStream:
    """A ModelStreamInfer call that has had one answer (so the server has registered it) and
    then sends nothing."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer()

    async def opened(self) -> OpenStream:
        await self.call.write(_mlp("hello"))
        answer = await self.call.read()
        assert answer is not grpc.aio.EOF and not answer.error_message, answer
        return self

    async def close(self) -> None:
        """Half-close and read to the end: once EOF arrives the server has let the stream go."""
        await self.call.done_writing()
        assert await self.call.read() is grpc.aio.EOF

    async def refused(self) -> grpc.aio.AioRpcError:
        await self.call.write(_mlp("hello"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await self.call.read()
        return caught.value


async def test_streams_per_connection_are_capped_and_others_still_served(
    limited_server: ServerProcess,
) -> None:
    address = limited_server.address
    async with (
        grpc.aio.insecure_channel(address) as hog,
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as other,
    ):
        streams = [await OpenStream(hog).opened() for _ in range(PER_CONNECTION)]
        error = await OpenStream(hog).refused()
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_streams_per_connection=3" in error.details()
        # Another connection from the same host can still stream and call.
        extra = await OpenStream(other).opened()
        stub = pb_grpc.GRPCInferenceServiceStub(other)
        assert (await stub.ServerLive(pb.ServerLiveRequest())).live
        assert (await stub.ModelInfer(_mlp(), timeout=10)).outputs
        for stream in [*streams, extra]:
            await stream.close()


async def test_streams_per_peer_host_are_capped_and_unary_calls_still_served(
    limited_server: ServerProcess,
) -> None:
    address = limited_server.address
    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(3)
    ]
    try:
        # 2 + 2 + 1 streams over three connections: the peer's fifth is the last it may open.
        opened = [await OpenStream(channels[i // 2]).opened() for i in range(PER_PEER)]
        error = await OpenStream(channels[2]).refused()
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"max_streams_per_peer={PER_PEER}" in error.details()
        stub = pb_grpc.GRPCInferenceServiceStub(channels[2])
        assert (await stub.ServerLive(pb.ServerLiveRequest())).live
        assert (await stub.ModelInfer(_mlp(), timeout=10)).outputs
        # Closing one stream frees its place.
        await opened[0].close()
        await (await OpenStream(channels[2]).opened()).close()
        for stream in opened[1:]:
            await stream.close()
    finally:
        for channel in channels:
            await channel.close()


async def test_an_idle_stream_is_ended_naming_the_timeout() -> None:
    with ServerProcess("--stream-idle-timeout-s", str(IDLE_S)) as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stream = await OpenStream(channel).opened()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await asyncio.wait_for(stream.call.read(), 30)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "stream_idle_timeout_s" in caught.value.details()
            # The server goes on serving.
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert (await stub.ModelInfer(_mlp(), timeout=10)).outputs


async def test_unparseable_messages_are_invalid_argument_and_a_stream_goes_on(
    limited_server: ServerProcess,
) -> None:
    garbage = b"\xff\xff\xff\xff\x0f"  # a field with tag 0x1fffffff and a truncated varint
    async with grpc.aio.insecure_channel(limited_server.address) as channel:
        raw_infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await raw_infer(garbage, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "inference.ModelInferRequest" in caught.value.details()

        raw_stream = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            request_serializer=lambda b: b,
            response_deserializer=pb.ModelStreamInferResponse.FromString,
        )

        async def messages() -> AsyncIterator[bytes]:
            yield _mlp("before").SerializeToString()
            yield garbage
            yield _mlp("after").SerializeToString()

        answers = [a async for a in raw_stream(messages(), timeout=30)]
    # mlp does not preserve ordering: its answers leave as they complete. "after" may come first
    # when it takes the fast path while "before" is still on its way back from the executor.
    assert sorted(a.infer_response.id for a in answers if not a.error_message) == ["after", "before"]
    errors = [a.error_message for a in answers if a.error_message]
    assert len(errors) == 1 and errors[0].startswith("INVALID_ARGUMENT: request is not a valid"), errors
    assert "Traceback" not in limited_server.output()


EMPTY = "Model name cannot be empty. Please enter a valid name to deploy."  # Triton's words


@pytest.mark.parametrize(
    ("name", "on_load", "on_unload"),
    [
        ("m" * 5000, "a model name is at most 255", "a model name is at most 255"),
        # Triton's words on load; its unload does not speak of traversal.
        ("../mlp", "model name must not contain path traversal characters", "not a model directory name"),
        ("", EMPTY, EMPTY),
        (" \t", EMPTY, EMPTY),
    ],
)
async def test_repository_names_that_cannot_be_models_are_invalid_argument(
    limited_server: ServerProcess, name: str, on_load: str, on_unload: str
) -> None:
    async with grpc.aio.insecure_channel(limited_server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for call, expected in (
            (stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=name), timeout=30), on_load),
            (
                stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=name), timeout=30),
                on_unload,
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert expected in caught.value.details()


async def test_load_parameters_are_refused_not_ignored(limited_server: ServerProcess) -> None:
    request = pb.RepositoryModelLoadRequest(model_name="mlp")
    request.parameters["shadow_of"].string_param = "mlp"  # not one of Triton's (config, file:)
    async with grpc.aio.insecure_channel(limited_server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.RepositoryModelLoad(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'shadow_of' is not supported" in caught.value.details()


@pytest.mark.parametrize("version", [" 1", "+1", "01", "1 ", "\u0661", "1.0"])
async def test_versions_that_only_look_like_one_are_refused(
    limited_server: ServerProcess, version: str
) -> None:
    request = _mlp()
    request.model_version = version
    async with grpc.aio.insecure_channel(limited_server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ModelInfer(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "model_version" in caught.value.details()
        request.model_version = "1"
        assert (await stub.ModelInfer(request, timeout=10)).model_version == "1"
        # The same rule on every RPC that names a version (ModelReady was ready=false once).
        for rpc, message in (
            (stub.ModelReady, pb.ModelReadyRequest),
            (stub.ModelMetadata, pb.ModelMetadataRequest),
            (stub.ModelConfig, pb.ModelConfigRequest),
            (stub.ModelStatistics, pb.ModelStatisticsRequest),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await rpc(message(name="mlp", version=version), timeout=10)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, rpc
            assert f"model_version '{version}' is not a version number" in caught.value.details()
        assert (await stub.ModelReady(pb.ModelReadyRequest(name="mlp", version="1"), timeout=10)).ready


async def test_queued_bytes_are_bounded_per_model() -> None:
    # 40 requests of 16 camera frames (2.4 MB each, no deadline) at once: beyond 8 MB queued the
    # model refuses at once, naming the limit; what it admitted is computed; all are answered.
    frames = np.zeros((16, 224, 224, 3), np.uint8)
    request = pb.ModelInferRequest(model_name="resnet_u8")
    request.inputs.add(name="frame", datatype="UINT8", shape=list(frames.shape))
    request.raw_input_contents.append(frames.tobytes())
    with ServerProcess("--max-queued-bytes-per-model", str(8_000_000)) as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            outcomes = await asyncio.gather(
                *(stub.ModelInfer(request, timeout=120) for _ in range(40)), return_exceptions=True
            )
            refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
            assert len(refused) < len(outcomes)  # some were admitted and computed
            assert refused, "nothing was refused: the byte limit did not apply"
            for error in refused:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
                assert "max_queued_bytes_per_model=8000000" in error.details()
            assert (await stub.ModelInfer(_mlp(), timeout=10)).outputs


async def test_overload_refusals_carry_a_standard_retry_info() -> None:
    # Any queued resnet_u8 frame (150 KB) passes a 1 KiB byte budget: refused with a hint.
    frame = np.zeros((1, 224, 224, 3), np.uint8)
    request = pb.ModelInferRequest(model_name="resnet_u8")
    request.inputs.add(name="frame", datatype="UINT8", shape=list(frame.shape))
    request.raw_input_contents.append(frame.tobytes())
    with ServerProcess("--max-queued-bytes-per-model", "1024", "--no-idle-dispatch") as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.ModelInfer(request, timeout=60)
    error = caught.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(error)  # grpc's own reader of the rich error model
    assert status is not None and status.message == error.details()
    infos = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert len(infos) == 1
    info = error_details_pb2.RetryInfo()
    infos[0].Unpack(info)
    assert info.retry_delay.ToNanoseconds() > 0


async def test_a_client_pinging_too_often_is_sent_away() -> None:
    # Keepalive enforcement (grpc core's ping policy, which the server keeps: no pings on a
    # connection without calls; max_ping_strikes 2): a client that pings its idle connection every
    # second gets GOAWAY "too_many_pings" after the strikes, and the connection goes READY -> IDLE.
    # (min_client_ping_s, the interval allowed while calls are open, is not shown here.)
    pinger = [
        ("grpc.keepalive_time_ms", 1000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    with ServerProcess("--min-client-ping-s", "5") as server:
        async with grpc.aio.insecure_channel(server.address, options=pinger) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert (await stub.ServerLive(pb.ServerLiveRequest(), timeout=10)).live
            assert channel.get_state() == grpc.ChannelConnectivity.READY
            await asyncio.wait_for(channel.wait_for_state_change(grpc.ChannelConnectivity.READY), 60)
            assert channel.get_state() != grpc.ChannelConnectivity.READY
