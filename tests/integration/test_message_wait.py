"""Calls that never send their request message cannot hold the server's call slots
(server/protocol/message_wait.py).

A client opened unary calls and sent neither a message nor a half-close: each held one of
`max_concurrent_rpcs` slots with no time limit, and a health check from anyone else was answered
RESOURCE_EXHAUSTED "Concurrent RPC limit exceeded!" until that client left. Now a peer host's calls
waiting over a second beyond `max_calls_awaiting_message_per_peer` are ended RESOURCE_EXHAUSTED,
and any call still waiting after `request_message_timeout_s` DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from clients import Client
from loadtest import silent_calls
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.server_process import ServerProcess

SLOTS, PER_PEER, TIMEOUT_S = 16, 3, 4
LIVE = "/inference.GRPCInferenceService/ServerLive"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    args = ("--max-concurrent-rpcs", str(SLOTS), "--max-calls-awaiting-message-per-peer", str(PER_PEER),
            "--request-message-timeout-s", str(TIMEOUT_S))  # fmt: skip
    with ServerProcess(*args) as running:
        yield running


async def _status(call: grpc.aio.StreamUnaryCall[bytes, bytes]) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def _ended(calls: list[grpc.aio.StreamUnaryCall[bytes, bytes]], count: int) -> None:
    """Until `count` of `calls` have ended (bounded by the caller's wait_for)."""
    pending = {asyncio.ensure_future(_status(c)) for c in calls}
    while len(calls) - len(pending) < count:
        _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    for waiting in pending:
        waiting.cancel()


async def _live(address: str) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            await pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=10)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


async def test_calls_that_never_send_their_message_are_ended_and_others_are_served(
    server: ServerProcess,
) -> None:
    stop = asyncio.Event()
    async with grpc.aio.insecure_channel(server.address) as channel:
        open_call = channel.stream_unary(LIVE, request_serializer=bytes, response_deserializer=bytes)
        calls = [open_call(silent_calls.silent(stop)) for _ in range(SLOTS)]  # every slot
        try:
            # Bounded: before the fix none of them ever ended (no deadline of their own).
            statuses = await asyncio.wait_for(asyncio.gather(*(_status(c) for c in calls)), 60)
        finally:
            stop.set()
            for call in calls:
                call.cancel()
    codes = [code for code, _ in statuses]
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == SLOTS - PER_PEER, statuses
    assert codes.count(grpc.StatusCode.DEADLINE_EXCEEDED) == PER_PEER, statuses
    said = {message for _, message in statuses}
    assert any(f"max_calls_awaiting_message_per_peer={PER_PEER}" in m for m in said), said
    assert f"within {TIMEOUT_S} s of the call's start (request_message_timeout_s)" in " ".join(said)
    assert await _live(server.address) == grpc.StatusCode.OK
    features = np.ones((2, 64), np.float32)
    assert Client(server.address).infer("mlp", {"features": features})["scores"].shape == (2, 2)


async def test_other_clients_get_slots_while_calls_wait_for_their_message(server: ServerProcess) -> None:
    """Once the calls over the peer's bound are ended, a health check finds a slot while the rest
    still wait (before: RESOURCE_EXHAUSTED "Concurrent RPC limit exceeded!" until they left)."""
    stop = asyncio.Event()
    async with grpc.aio.insecure_channel(server.address) as channel:
        open_call = channel.stream_unary(LIVE, request_serializer=bytes, response_deserializer=bytes)
        calls = [open_call(silent_calls.silent(stop)) for _ in range(SLOTS)]
        try:
            await asyncio.wait_for(_ended(calls, SLOTS - PER_PEER), 30)
            assert await _live(server.address) == grpc.StatusCode.OK
            assert sum(not c.done() for c in calls) <= PER_PEER
        finally:
            stop.set()
            for call in calls:
                call.cancel()


async def test_the_benchmarks_short_mode_finds_the_server_answering(server: ServerProcess) -> None:
    """loadtest.silent_calls, small: its last ServerLive finds a slot while the silent calls are
    ended (the first, at 2 s, may come before the server's first look on a slow machine)."""
    seen = await silent_calls.run(server.address, SLOTS, 6.0)
    assert [at for at, _, _ in seen] == [2.0, 6.0]
    assert seen[-1][1] == "OK" and seen[-1][2] >= SLOTS - PER_PEER
