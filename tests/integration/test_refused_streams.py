"""Streams refused for want of a token keep writing, over a real server with small RPC limits:
each refused stream is read until its caller goes quiet (at most 1 s; grpc/grpc#36066), and those
lingering refusals had taken every concurrent-RPC slot, so a client with a token was refused too,
health checks included (35 of 43 ServerLive calls). They are bounded now (QuietRefusals), leaving
half the slots the open streams cannot take."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from server.protocol.calls import (
    REFUSAL_MAX_S,
    REFUSAL_PACED_GAP_S,
    QuietRefusals,
    paused_after,
    read_until_quiet,
    refusal_room,
)
from tests.support.certs import write_tokens
from tests.support.server_process import ServerProcess

TOKEN = "inference-token-0123456789"
ATTACKERS = 80


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tokens = write_tokens(tmp_path_factory.mktemp("tokens") / "tokens", TOKEN, "admin-token-0123456789abc")
    args = ["--auth-tokens-file", str(tokens), "--max-concurrent-rpcs", "64", "--max-streams", "32"]
    with ServerProcess(*args, "--max-streams-per-peer", "16") as running:
        yield running


async def test_streams_refused_without_a_token_leave_slots_for_everyone_else(server: ServerProcess) -> None:
    async with (
        grpc.aio.insecure_channel(server.address) as hostile,
        grpc.aio.insecure_channel(
            server.address, options=[("grpc.use_local_subchannel_pool", 1)]
        ) as friendly,
    ):
        attacker = pb_grpc.GRPCInferenceServiceStub(hostile)
        stop = asyncio.Event()

        async def keep_writing() -> None:  # no token: refused; writes on, and opens another
            while not stop.is_set():
                call = attacker.ModelStreamInfer()
                try:
                    while not stop.is_set():
                        await call.write(pb.ModelInferRequest(model_name="mlp"))
                        await asyncio.sleep(0.02)  # a camera's pace, not synchronisation
                except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                    await asyncio.sleep(0.02)  # refused: the stream has ended
                finally:
                    call.cancel()

        streams = [asyncio.ensure_future(keep_writing()) for _ in range(ATTACKERS)]
        try:
            victim = pb_grpc.GRPCInferenceServiceStub(friendly)
            metadata = (("authorization", f"Bearer {TOKEN}"),)
            outcomes = []
            await asyncio.sleep(0.5)  # the attack under way (its refusals linger up to 1 s each)
            for _ in range(10):
                await asyncio.sleep(0.1)  # spread over the attack, not synchronisation
                try:
                    await victim.ServerLive(pb.ServerLiveRequest(), timeout=10)
                    await victim.ModelReady(pb.ModelReadyRequest(name="mlp"), timeout=10, metadata=metadata)
                    outcomes.append("ok")
                except grpc.aio.AioRpcError as err:
                    outcomes.append(f"{err.code().name}: {err.details()}")
            assert outcomes == ["ok"] * 10
        finally:
            stop.set()
            await asyncio.gather(*streams)


async def test_past_the_bound_a_refusal_is_answered_at_once() -> None:
    refusals = QuietRefusals(2)

    async def chatty() -> AsyncIterator[object]:  # a caller that never goes quiet, nor pauses
        while True:
            yield b""
            await asyncio.sleep(0)

    lingering = [asyncio.ensure_future(refusals.read_until_quiet(chatty())) for _ in range(2)]
    while refusals.lingering < 2:
        await asyncio.sleep(0)
    await asyncio.wait_for(refusals.read_until_quiet(chatty()), REFUSAL_MAX_S / 2)  # not read at all
    assert refusals.lingering == 2
    await asyncio.gather(*lingering)  # each ends within REFUSAL_MAX_S
    assert refusals.lingering == 0
    assert (refusal_room(64, 32), refusal_room(4096, 2048), refusal_room(10, 10)) == (16, 1024, 1)


async def test_a_paced_writer_is_answered_right_after_one_of_its_messages() -> None:
    """A camera at 20 fps writes every 50 ms, the quiet wait's length: the refusal went out as its
    next frame did, and grpc.aio reported that write INTERNAL "Internal error from Core" (a load
    test's refused streams, grpc/grpc#36066). Now it ends right after the first message that came
    a pause after the one before, a period before the next write; never by the (here 60 s) quiet."""
    read: list[int] = []
    never = asyncio.Event()

    async def camera() -> AsyncIterator[object]:
        for frame in range(3):
            read.append(frame)
            yield b""
            await asyncio.sleep(REFUSAL_PACED_GAP_S * 5)  # the pacing under test, not synchronisation
        await never.wait()
        yield b""

    await asyncio.wait_for(read_until_quiet(camera(), quiet_s=60.0, max_s=120.0), 30.0)
    assert read == [0, 1]  # the first message opens no gap; the second ends it


async def test_a_burst_of_large_messages_is_not_taken_for_a_paced_writer() -> None:
    """A tester's burst of 1 MB messages on a busy machine arrived 10 ms apart, was taken for a
    paced writer and answered mid-burst: INTERNAL in 13 of 60 tries (grpc/grpc#36066). A gap counts
    as a pause only well past the message's own transfer: 64 MB messages 50 ms apart are still a
    burst (a pause would be 2.7 s: no loaded machine's scheduling comes near), read on to its end
    (then the quiet wait, here 0.5 s, answers it)."""
    read: list[int] = []
    never = asyncio.Event()

    class Large:
        def ByteSize(self) -> int:
            return 64 << 20

    async def burst() -> AsyncIterator[object]:
        for frame in range(3):
            read.append(frame)
            yield Large()
            await asyncio.sleep(0.05)  # the transfer under test, not synchronisation
        await never.wait()
        yield Large()

    await asyncio.wait_for(read_until_quiet(burst(), quiet_s=0.5, max_s=120.0), 30.0)
    assert read == [0, 1, 2]  # every message of the burst read: not answered after the second
    assert paused_after(b"x" * 1000) == pytest.approx(REFUSAL_PACED_GAP_S + 2000 / 50e6)
