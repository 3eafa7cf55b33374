"""How a client stream ends when the server ends it first: killed, idle, or refused at its limit.

Before, `async for` over a stream that died before done_sending() ended normally (the error showed
only at the next send), recv() raised a bare EOFError, and a refused stream's frames could fail
CANCELLED ("the stream ended") instead of the server's RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from clients import AsyncClient, DeadlineExceeded, Overloaded, SluicewayError, StreamResult, StreamSession
from tests.integration import client_fixtures
from tests.integration.client_fixtures import features
from tests.support.server_process import ServerProcess

start_demo_server = client_fixtures.start_demo_server

ROUNDS = 20


@pytest.fixture(scope="module")
def one_stream_server(demo_repo: Path) -> Iterator[ServerProcess]:
    """One stream per connection: a client's second stream is refused RESOURCE_EXHAUSTED."""
    with ServerProcess("--model-repository", str(demo_repo), "--max-streams-per-connection", "1") as server:
        yield server


async def consume_until_it_fails(
    stream: StreamSession, got: list[StreamResult], first: asyncio.Event
) -> None:
    async for result in stream:
        got.append(result)
        first.set()


async def until_its_call_ended(stream: StreamSession) -> None:
    """Until the gRPC call itself has ended, which may be before the session's reader saw it."""
    ended = asyncio.Event()
    stream._call.add_done_callback(lambda _: ended.set())
    await ended.wait()


async def test_iteration_recv_and_send_raise_the_error_of_a_stream_whose_server_was_killed(
    start_demo_server: Callable[[], ServerProcess],
) -> None:
    server = start_demo_server()
    async with AsyncClient(server.address) as client, client.stream("mlp") as stream:
        got: list[StreamResult] = []
        answered = asyncio.Event()
        consumer = asyncio.create_task(consume_until_it_fails(stream, got, answered))
        await stream.send({"features": features(1)})
        await answered.wait()  # the consumer is between frames, as a producer's pause leaves it
        server.kill()
        with pytest.raises(SluicewayError) as caught:
            await asyncio.wait_for(consumer, 60)  # bounded, should it hang
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE
        assert got[0].unwrap()["scores"].shape == (1, 2)
        with pytest.raises(SluicewayError) as again:
            await stream.recv()  # was a bare EOFError("no frames left on this stream")
        assert again.value.code == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(SluicewayError):
            await stream.send({"features": features(1)})


async def test_iteration_raises_the_servers_idle_timeout(demo_repo: Path) -> None:
    args = ("--model-repository", str(demo_repo), "--stream-idle-timeout-s", "0.2")
    with ServerProcess(*args) as server:
        async with AsyncClient(server.address) as client, client.stream("mlp") as stream:
            got: list[StreamResult] = []
            answered = asyncio.Event()
            consumer = asyncio.create_task(consume_until_it_fails(stream, got, answered))
            await stream.send({"features": features(1)})
            await answered.wait()
            # Nothing more is sent: the server ends the stream once its idle timeout passes.
            with pytest.raises(DeadlineExceeded, match="stream_idle_timeout_s"):
                await asyncio.wait_for(consumer, 60)
            with pytest.raises(DeadlineExceeded, match="stream_idle_timeout_s"):
                await stream.recv()


async def test_a_refused_stream_fails_every_send_and_recv_overloaded_never_cancelled(
    one_stream_server: ServerProcess,
) -> None:
    client = AsyncClient(one_stream_server.address, default_timeout_s=60)
    async with client, client.stream("mlp") as held:
        await held.send({"features": features(1)})
        assert (await held.recv())["scores"].shape == (1, 2)  # open, on the client's connection
        for _ in range(ROUNDS):
            with pytest.raises(Overloaded, match="max_streams_per_connection"):
                async with client.stream("mlp") as refused:
                    await refused.send({"features": features(1)})
                    # Send the next frame as soon as the call has ended, before the stream's
                    # reader has read its status: the race that answered CANCELLED.
                    await until_its_call_ended(refused)
                    with pytest.raises(Overloaded, match="max_streams_per_connection"):
                        await refused.send({"features": features(1)})
                    with pytest.raises(Overloaded, match="max_streams_per_connection"):
                        await refused.recv()  # the frame sent before the refusal
                    await refused.recv()  # then the stream's own error, raised out of `with`
        await held.send({"features": features(1)})
        assert (await held.recv())["scores"].shape == (1, 2)  # the held stream was never hurt


async def test_each_client_has_its_own_connection_so_more_clients_hold_more_streams(
    one_stream_server: ServerProcess,
) -> None:
    """What the README says of max_streams_per_connection: the limit is per client (its channel per
    endpoint, with connections of its own), so a second client holds a stream the first cannot."""
    first, second = AsyncClient(one_stream_server.address), AsyncClient(one_stream_server.address)
    async with first, second, first.stream("mlp") as one, second.stream("mlp") as other:
        for stream in (one, other):
            await stream.send({"features": features(1)})
            assert (await stream.recv())["scores"].shape == (1, 2)
        with pytest.raises(Overloaded, match="max_streams_per_connection"):
            async with first.stream("mlp") as refused:
                await refused.send({"features": features(1)})
                await refused.recv()
