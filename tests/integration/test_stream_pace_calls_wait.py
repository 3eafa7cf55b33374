"""What the stream pace asks before it holds a read (server/protocol/loop_pace.py): whether grpc
core holds calls no handler has taken. A real server in this process: its event loop is held on
purpose (as a busy one is) while a unary call arrives, so the call waits in grpc core."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from pathlib import Path

import grpc
import pytest

from loadtest import silent_calls
from protos import grpc_service_pb2_grpc as pb_grpc
from server.app import SluicewayServer
from server.protocol.core_calls import CoreCalls
from server.settings import ServerSettings
from tests.support.in_process import core_started, mlp_only_repo, mlp_request
from tests.support.server_process import wait_until

pytestmark = pytest.mark.serial  # it blocks its event loop on purpose


def _unanswered(core: CoreCalls) -> int:
    counts = core.counts()
    return -1 if counts is None else counts.unanswered


@pytest.fixture
def repo(demo_repo: Path, tmp_path: Path) -> Path:
    return mlp_only_repo(demo_repo, tmp_path / "repo")


async def _started(repo: Path, tmp_path: Path) -> tuple[SluicewayServer, CoreCalls]:
    """A server in this process on a free port, and grpc core's counts of its calls."""
    settings = ServerSettings(
        host="127.0.0.1", port=0, model_repository=repo, cache_dir=tmp_path, metrics=False
    )
    server = SluicewayServer(settings)
    await server.start()
    core = server.core_calls
    assert core is not None, "grpc core's counts (channelz) were not found"
    return server, core


async def test_calls_wait_only_while_grpc_core_holds_a_call_no_handler_has_taken(
    repo: Path, tmp_path: Path
) -> None:
    server, core = await _started(repo, tmp_path)
    address = f"127.0.0.1:{server.port}"
    try:
        assert not server._calls_wait()  # nothing at all
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            stream = stub.ModelStreamInfer()
            await stream.write(mlp_request("s1"))
            assert (await stream.read()).infer_response.id == "s1"
            assert not server._calls_wait()  # an open stream has its handler: it waits for nothing
            before = core_started(core)
            sent = threading.Event()

            def call() -> str:
                with grpc.insecure_channel(address) as blocking:
                    infer = pb_grpc.GRPCInferenceServiceStub(blocking).ModelInfer
                    future = infer.future(mlp_request("u"), timeout=60)
                    sent.set()
                    return str(future.result().id)

            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                answer = pool.submit(call)
                # The loop is held until grpc core has taken the call: no handler has seen it.
                wait_until(lambda: sent.is_set() and core_started(core) > before, "the unary call")
                assert server._calls_wait()
                assert await asyncio.wrap_future(answer) == "u"  # the loop runs: it is answered
            await stream.done_writing()
            assert await stream.read() == grpc.aio.EOF
        await asyncio.wait_for(_until(lambda: _unanswered(core) == 0), 30)
        assert not server._calls_wait()  # every call ended
    finally:
        await server.stop(grace_s=1.0)


async def _until(done: object) -> None:
    while not done():  # type: ignore[operator]
        await asyncio.sleep(0.01)  # polls a condition with a bound (wait_for), not a timed wait


async def test_a_call_waiting_for_its_request_message_is_not_a_call_waiting_for_the_loop(
    repo: Path, tmp_path: Path
) -> None:
    """A call whose handler waits for its client's message has been taken: counted as waiting, one
    such call (a client that never sends it) held every stream read a tick for as long as it stayed."""
    server, core = await _started(repo, tmp_path)
    stop = asyncio.Event()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            live = "/inference.GRPCInferenceService/ServerLive"
            call = channel.stream_unary(live, request_serializer=bytes, response_deserializer=bytes)(
                silent_calls.silent(stop)
            )
            await asyncio.wait_for(_until(lambda: server.message_waits.count == 1), 30)
            assert _unanswered(core) >= 1  # grpc core holds it unanswered ...
            assert not server._calls_wait()  # ... and its handler has it
            call.cancel()
        await asyncio.wait_for(_until(lambda: server.message_waits.count == 0), 30)
    finally:
        stop.set()
        await server.stop(grace_s=1.0)
