"""A drain and the calls grpc core holds (grpc/grpc#41785): a call grpc core has taken but grpc.aio
has not yet handed to a handler, because the event loop is busy, is answered CANCELLED by grpc core
when the endpoint closes. The drain now counts such calls from grpc core's own counts (channelz)
and keeps the endpoint open until each is answered (UNAVAILABLE "server is shutting down")."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
from pathlib import Path

import grpc
import pytest

from protos import grpc_service_pb2_grpc as pb_grpc
from server.app import SluicewayServer
from server.protocol.core_calls import CoreCalls, server_ids
from server.settings import ServerSettings
from tests.support.in_process import core_started, mlp_only_repo, mlp_request
from tests.support.server_process import wait_until

# It blocks its event loop on purpose while calls arrive; alone, it is not raced by another worker.
pytestmark = pytest.mark.serial

CALLS = 12


def _outcome(future: grpc.Future) -> str:
    try:
        future.result()
        return "OK"
    except grpc.RpcError as exc:
        return f"{exc.code().name}: {exc.details()}"


def _send(address: str, calls: int, sent: threading.Event) -> collections.Counter[str]:
    """`calls` ModelInfer calls at once from a blocking client of its own (the test's event loop is
    held): the outcome of each."""
    with grpc.insecure_channel(address) as channel:
        infer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer  # type: ignore[no-untyped-call]
        futures = [infer.future(mlp_request(), timeout=60) for _ in range(calls)]
        sent.set()
        return collections.Counter(_outcome(f) for f in futures)


@pytest.fixture
def repo(demo_repo: Path, tmp_path: Path) -> Path:
    return mlp_only_repo(demo_repo, tmp_path / "repo")


async def test_calls_grpc_core_holds_at_the_drain_are_answered_unavailable_not_cancelled(
    repo: Path, tmp_path: Path
) -> None:
    settings = ServerSettings(
        host="127.0.0.1", port=0, model_repository=repo, cache_dir=tmp_path, metrics=False
    )  # fmt: skip
    server = SluicewayServer(settings)
    await server.start()
    assert server.core_calls is not None, "grpc core's counts (channelz) were not found"
    core = server.core_calls
    try:
        before = core.counts()
        assert before is not None
        sent = threading.Event()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            outcomes = pool.submit(_send, f"127.0.0.1:{server.port}", CALLS, sent)
            # The event loop is held (as a busy one is under load) until grpc core has taken every
            # call: grpc.aio hands it none meanwhile, so they wait in grpc core, no handler saw them.
            wait_until(lambda: sent.is_set() and core_started(core) >= before.started + CALLS, "the calls")
            await server.stop(grace_s=10.0)  # the drain, as SIGTERM starts it
            counted = await asyncio.wrap_future(outcomes)
    finally:
        await server.stop(grace_s=1.0)
    # Before: the drain's quiet window counted only calls a handler had seen, and closed at once:
    # grpc core answered the calls it held CANCELLED (9 of 12 here, 2 runs on each Python).
    assert counted == {"UNAVAILABLE: server is shutting down": CALLS}, counted


async def test_a_server_reads_its_own_grpc_core_counts_not_another_servers() -> None:
    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    methods = {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    handler = grpc.method_handlers_generic_handler("t.Echo", methods)
    servers: list[tuple[grpc.aio.Server, CoreCalls, int]] = []
    try:
        for _ in range(2):
            ids = server_ids()
            one = grpc.aio.server()
            core = CoreCalls.of_new_server(ids)
            assert core is not None
            one.add_generic_rpc_handlers((handler,))
            servers.append((one, core, one.add_insecure_port("127.0.0.1:0")))
            await one.start()
        (_, first, _), (_, second, port) = servers
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for _ in range(3):
                await channel.unary_unary("/t.Echo/Echo")(b"x", timeout=30)
            assert second.counts() == (3, 3)  # taken and ended (the answers were read)
            assert first.counts() == (0, 0)
    finally:
        for one, _, _ in servers:
            await one.stop(None)
