"""A peer whose connection goes dead without a close (both directions stalled, sockets open: a
dropped NAT entry, a hung host) is dropped after keepalive_time_s + keepalive_timeout_s, and its
stream with it. Before, `keepalive_timeout_s` did nothing: grpc core waits for a keepalive ping's
ack for `grpc.http2.ping_timeout_ms` (default 60 s), so the connection and its stream stayed open
for a minute whatever the setting said; the server now sets both arguments."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from clients.endpoints import ChannelOptions
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from server.grpc_options import keepalive_options
from server.settings import ServerSettings
from tests.support.server_process import ServerProcess, wait_until_async
from tests.support.stalling_proxy import StallingProxy

# Keepalive 1 s / 1 s: a dead peer is dropped after ~2 s. The bound is generous (a loaded machine)
# and far below grpc's 60 s default ping timeout, which held it before.
DROPPED_WITHIN_S = 20.0


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess("--keepalive-time-s", "1", "--keepalive-timeout-s", "1") as running:
        yield running


def streams_open(server: ServerProcess) -> float:
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "sluiceway_streams_open":
                return sample.value
    return 0.0


def test_the_keepalive_timeout_is_the_keepalive_pings_deadline() -> None:
    options = dict(keepalive_options(ServerSettings(keepalive_timeout_s=3)))
    assert options["grpc.keepalive_timeout_ms"] == 3000
    assert options["grpc.http2.ping_timeout_ms"] == 3000
    client = dict(ChannelOptions(keepalive_timeout_ms=3000).as_grpc())
    assert client["grpc.keepalive_timeout_ms"] == client["grpc.http2.ping_timeout_ms"] == 3000


def mlp_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="features", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(np.zeros((1, 64), np.float32).tobytes())
    return request


@contextlib.asynccontextmanager
async def stream_through_proxy(
    server: ServerProcess, options: Sequence[tuple[str, int | str]] = ()
) -> AsyncIterator[tuple[StallingProxy, Any]]:
    """A ModelStreamInfer call through a StallingProxy, answered once (open and served)."""
    async with contextlib.AsyncExitStack() as stack:
        proxy = await stack.enter_async_context(StallingProxy(server.port))
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}", options=options)
        await stack.enter_async_context(channel)
        call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(timeout=120)
        stack.callback(call.cancel)
        await call.write(mlp_request())
        answer = await call.read()
        assert not answer.error_message, answer.error_message
        yield proxy, call


async def test_a_stalled_peer_and_its_stream_are_dropped(server: ServerProcess) -> None:
    async with stream_through_proxy(server) as (proxy, _):
        assert await asyncio.to_thread(streams_open, server) == 1
        proxy.stall()
        await asyncio.wait_for(proxy.server_closed.wait(), DROPPED_WITHIN_S)

        async def closed() -> bool:
            return await asyncio.to_thread(streams_open, server) == 0

        await wait_until_async(closed, "the dropped stream to close", DROPPED_WITHIN_S)


async def test_a_client_drops_a_stalled_server(server: ServerProcess) -> None:
    """The client's side: its stream to a server that went silent fails UNAVAILABLE after its own
    keepalive time + timeout (the proxy never passes on the server's close)."""
    options = ChannelOptions(keepalive_time_ms=1000, keepalive_timeout_ms=1000).as_grpc()
    async with stream_through_proxy(server, options) as (proxy, call):
        proxy.stall()
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await asyncio.wait_for(call.read(), DROPPED_WITHIN_S)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
