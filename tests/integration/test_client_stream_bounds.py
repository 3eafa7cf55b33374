"""AsyncClient.stream's bounds against real servers: a reused id never takes an old frame's late
answer, a write the server does not take is bounded by frame_timeout_s, leaving an empty session
raises no grpc internals, and max_in_flight bounds results not yet received by the caller."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from clients import AsyncClient, DeadlineExceeded, Unavailable
from clients.base import MAX_TIMEOUT_S
from clients.stream import StreamSession
from tests.integration import client_fixtures
from tests.integration.client_fixtures import features
from tests.support.never_answers import never_answers
from tests.support.nothing_listening import nothing_listening
from tests.support.server_process import ServerProcess
from tests.support.stalling_proxy import StallingProxy

mlp_reference = client_fixtures.mlp_reference

# Each check below ends within a few frame timeouts; this only bounds a hang.
BOUND_S = 8.0
FRAME_TIMEOUT_S = 0.5


async def test_a_reused_id_never_takes_the_late_answer_of_the_frame_that_timed_out(
    zoo_server: ServerProcess, mlp_reference: Callable[[np.ndarray], np.ndarray]
) -> None:
    """The old frame's late answer had been returned as the new frame's result, and the new
    frame's own answer dropped as late. The id is refused until the late answer came."""
    async with StallingProxy(zoo_server.port) as proxy:
        client = AsyncClient(f"127.0.0.1:{proxy.port}")
        async with client, client.stream("mlp", frame_timeout_s=FRAME_TIMEOUT_S) as stream:
            await stream.send({"features": features(1)}, request_id="a")
            await stream.recv()  # connected, the id answered and free again
            proxy.hold_answers()  # the server answers; the client hears nothing for now
            await stream.send({"features": features(1, seed=1)}, request_id="a")
            with pytest.raises(DeadlineExceeded, match="no answer within the frame's timeout"):
                await asyncio.wait_for(stream.recv(), BOUND_S)
            with pytest.raises(ValueError, match="'a' failed here for want of an answer"):
                await stream.send({"features": features(2, seed=2)}, request_id="a")
            proxy.release_answers()
            b = features(2, seed=2)
            await stream.send({"features": b}, request_id="b")
            # The answers arrive in the server's order, 'a' (late) before 'b': once 'b' is
            # received, the late answer was read and dropped, and 'a' may be used again.
            np.testing.assert_allclose(
                (await stream.recv())["scores"], mlp_reference(b), rtol=1e-5, atol=1e-5
            )
            a = features(3, seed=3)
            await stream.send({"features": a}, request_id="a")
            np.testing.assert_allclose(
                (await stream.recv())["scores"], mlp_reference(a), rtol=1e-5, atol=1e-5
            )


async def test_a_send_to_a_port_that_never_answers_fails_unavailable_within_the_frame_timeout() -> None:
    """send() had waited 20 s for grpc's connect timeout, whatever frame_timeout_s said."""
    with never_answers() as address:
        async with AsyncClient(address) as client:
            started = time.monotonic()
            with pytest.raises(Unavailable, match="frame_timeout_s"):
                async with client.stream("mlp", frame_timeout_s=FRAME_TIMEOUT_S) as stream:
                    await asyncio.wait_for(stream.send({"features": features(1)}), BOUND_S)
            assert time.monotonic() - started < BOUND_S


async def test_a_send_to_a_frozen_server_fails_unavailable_within_the_frame_timeout(
    zoo_server: ServerProcess,
) -> None:
    """A server that stops reading (frozen): large frames fill the connection's window, and send()
    had blocked ~20 s, then failed INTERNAL ("Internal error from Core"), a client-side failure."""
    frame = {"features": np.zeros((128, 64), np.float32)}  # 32 KiB: a few fill the window
    async with StallingProxy(zoo_server.port) as proxy:
        client = AsyncClient(f"127.0.0.1:{proxy.port}")
        async with client, client.stream("mlp", frame_timeout_s=FRAME_TIMEOUT_S) as stream:
            await stream.send(frame)
            await stream.recv()
            proxy.stall()
            started = time.monotonic()
            with pytest.raises(Unavailable, match="frame_timeout_s"):
                for _ in range(1000):  # until the window is full and one send times out
                    await asyncio.wait_for(stream.send(frame), BOUND_S)
                    if stream.unreceived == stream.max_in_flight:
                        await stream.recv_result()  # each fails, after its own timeout at most
            assert time.monotonic() - started < 3 * BOUND_S


async def test_leaving_an_empty_stream_raises_no_grpc_internals() -> None:
    """`async with client.stream(...): pass` against a refused port raised grpc's own
    ExecuteBatchError; against a port that never answers, the same after 20 s."""
    with nothing_listening() as refused, never_answers() as silent:
        for address in (refused, silent):
            await asyncio.wait_for(enter_and_leave(address), BOUND_S)


async def enter_and_leave(address: str) -> None:
    async with AsyncClient(address) as client, client.stream("mlp", frame_timeout_s=FRAME_TIMEOUT_S):
        pass


async def test_max_in_flight_bounds_answers_not_yet_received(zoo_server: ServerProcess) -> None:
    """Answered frames the caller had not received yet did not count: a caller that sent
    everything before reading held every answer (1.2 GB after 300 frames of 4 MB)."""
    x = {"features": features(1)}
    async with AsyncClient(zoo_server.address) as client, client.stream("mlp", max_in_flight=2) as stream:
        await stream.send(x)
        await stream.send(x)
        await asyncio.wait_for(asyncio.wait(set(stream._order)), BOUND_S)  # both answered
        assert stream.in_flight == 0 and stream.unreceived == 2
        third = asyncio.create_task(stream.send(x))
        for _ in range(10):  # loop turns for `third` to reach its wait; nothing to time
            await asyncio.sleep(0)
        assert not third.done()
        await stream.recv()  # frees a slot
        await asyncio.wait_for(third, BOUND_S)
        assert stream.unreceived == 2
        await stream.done_sending()
        assert len([result.unwrap() async for result in stream]) == 2


async def test_the_longest_timeouts_are_taken_by_grpc_and_the_server(zoo_server: ServerProcess) -> None:
    """MAX_TIMEOUT_S fits grpc's deadline and the `timeout` parameter (int64 microseconds)."""
    client = AsyncClient(zoo_server.address, default_timeout_s=MAX_TIMEOUT_S, stream_timeout_s=MAX_TIMEOUT_S)
    async with client:
        assert (await client.infer("mlp", {"features": features(1)}))["scores"].shape == (1, 2)
        async with client.stream("mlp") as stream:
            await stream.send({"features": features(1)})
            assert (await stream.recv())["scores"].shape == (1, 2)


BUSY_CONFIG = """
name: "busy"
backend: "identity"
max_batch_size: 8
dynamic_batching { }
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
parameters [ { key: "execute_delay_ms" value: { string_value: "400" } } ]
"""


async def test_a_busy_server_that_reads_late_gets_its_frames_answered_not_cut(tmp_path: Path) -> None:
    """The server stops reading a stream holding `stream_max_held_bytes` while it answers earlier
    frames (here 1 MiB, one frame, 0.4 s a run). The client had cut the stream Unavailable when a
    write waited frame_timeout_s, and failed frames DeadlineExceeded whose OK answers came later
    than frame_timeout_s after their write (a tester: 11 of 16). Answers still coming, it waits."""
    (tmp_path / "busy" / "1").mkdir(parents=True)
    (tmp_path / "busy" / "config.pbtxt").write_text(BUSY_CONFIG)
    args = ("--model-repository", str(tmp_path), "--stream-max-held-bytes", str(1 << 20))
    frame = np.arange((1 << 20) // 4, dtype=np.float32)[None]
    with ServerProcess(*args) as server:
        client = AsyncClient(server.address)
        async with client, client.stream("busy", max_in_flight=6, frame_timeout_s=0.6) as stream:

            async def send_all() -> None:
                for i in range(6):
                    await stream.send({"INPUT0": frame + i})
                await stream.done_sending()

            sender = asyncio.create_task(send_all())
            got = [result async for result in stream]
            await asyncio.wait_for(sender, BOUND_S)
    for i, result in enumerate(got):
        np.testing.assert_array_equal(result.unwrap()["OUTPUT0"], frame + i)  # none failed here


async def test_a_send_cancelled_mid_write_leaves_the_stream_going(
    zoo_server: ServerProcess, mlp_reference: Callable[[np.ndarray], np.ndarray]
) -> None:
    """A message half-written cannot be taken back, and grpc cancelled the whole call with a
    cancelled write: every frame in flight failed and the stream was over. The write now ends
    first; the frame counts as sent, its result comes in order, and the stream goes on."""
    big = np.zeros((128, 64), np.float32)  # 32 KiB, the model's most rows
    async with StallingProxy(zoo_server.port) as proxy:
        client = AsyncClient(f"127.0.0.1:{proxy.port}")
        async with client, client.stream("mlp", frame_timeout_s=BOUND_S, max_in_flight=256) as stream:
            await stream.send({"features": features(1)}, request_id="first")
            await stream.recv()  # connected
            proxy.hold_requests()
            # 4 MiB in 128 frames: more than the connection's windows, so the writes cannot end
            # while the proxy holds the client's bytes.
            frames = [{"features": big + i} for i in range(128)]
            sending = asyncio.create_task(send_all(stream, frames))
            done, _ = await asyncio.wait({sending}, timeout=0.5)
            assert not done, "the writes ended with the client's bytes held"
            sending.cancel()
            proxy.release_requests()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(sending, BOUND_S)
            after = features(2, seed=2)
            await stream.send({"features": after}, request_id="after")
            await stream.done_sending()
            results = [result async for result in stream]
    ids = [result.request_id for result in results]
    assert ids[-1] == "after" and ids[:-1] == [f"f{i}" for i in range(len(ids) - 1)], ids
    assert all(result.error is None for result in results), [r.error for r in results]
    np.testing.assert_allclose(results[-1].outputs["scores"], mlp_reference(after), rtol=1e-5, atol=1e-5)


async def send_all(stream: StreamSession, frames: list[dict[str, np.ndarray]]) -> None:
    for i, frame in enumerate(frames):
        await stream.send(frame, request_id=f"f{i}")


async def test_a_send_cancelled_while_a_frozen_server_cut_the_stream_leaves_it_unavailable(
    zoo_server: ServerProcess,
) -> None:
    """A caller's cancel (asyncio.wait_for) during a write the frozen server never took: the cut
    had gone unrecorded, and every frame failed CANCELLED "the stream was closed" instead of
    Unavailable, the error a caller fails over on (a tester)."""
    frame = {"features": np.zeros((128, 64), np.float32)}  # 32 KiB: a few fill the window
    async with StallingProxy(zoo_server.port) as proxy:
        client = AsyncClient(f"127.0.0.1:{proxy.port}")
        async with client, client.stream("mlp", frame_timeout_s=FRAME_TIMEOUT_S, max_in_flight=256) as stream:
            await stream.send(frame)
            await stream.recv()
            proxy.stall()
            cancels = 0
            with pytest.raises(Unavailable, match="frame_timeout_s"):
                for _ in range(200):  # until a write blocks; its caller gives up first
                    try:
                        await asyncio.wait_for(stream.send(frame), FRAME_TIMEOUT_S / 5)
                    except asyncio.TimeoutError:
                        # Cancelled: either the blocked write, which the watch then cut (the next
                        # send says so), or, on a loaded machine, a write only slow to be written
                        # (no cut: it had ended this loop with the stream alive, and the test hung).
                        cancels += 1
            assert cancels >= 1  # the blocked write's caller gave up before the stream was cut
            results = []
            with pytest.raises(Unavailable, match="frame_timeout_s"):
                while True:
                    results.append(await asyncio.wait_for(stream.recv_result(), BOUND_S))
            errors = {type(r.error) for r in results if r.error is not None}
            assert errors <= {Unavailable}, [r.error for r in results]
