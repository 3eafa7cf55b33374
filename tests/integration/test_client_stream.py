"""AsyncClient.stream against real server processes: order, per-frame errors, back-pressure."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from clients import AsyncClient, InvalidArgument, MessageTooLarge, NotFound, StreamResult
from tests.integration import client_fixtures
from tests.integration.client_fixtures import features
from tests.support.models import filler_model
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess

client_limits_server = client_fixtures.client_limits_server
mlp_reference = client_fixtures.mlp_reference


async def test_many_frames_come_back_in_sending_order_with_bounded_frames_in_flight(
    zoo_server: ServerProcess, mlp_reference: Callable[[np.ndarray], np.ndarray]
) -> None:
    frames = [features(1 + i % 4, seed=i) for i in range(300)]
    sent: list[str] = []
    most_in_flight = 0
    async with AsyncClient(zoo_server.address) as client, client.stream("mlp", max_in_flight=16) as stream:

        async def produce() -> None:
            nonlocal most_in_flight
            for data in frames:
                sent.append(await stream.send({"features": data}))
                most_in_flight = max(most_in_flight, stream.in_flight)
            await stream.done_sending()

        producer = asyncio.create_task(produce())
        results = [result async for result in stream]
        await producer
    assert [r.request_id for r in results] == sent and len(set(sent)) == 300
    assert 1 <= most_in_flight <= 16
    for data, result in zip(frames, results, strict=True):
        np.testing.assert_allclose(result.unwrap()["scores"], mlp_reference(data), rtol=1e-5, atol=1e-5)


async def test_a_failed_frame_raises_for_itself_only_and_the_stream_goes_on(
    zoo_server: ServerProcess,
) -> None:
    good = {"features": features(2)}
    async with AsyncClient(zoo_server.address) as client, client.stream("mlp") as stream:
        await stream.send(good, request_id="first")
        await stream.send({"features": features(2)[:, :10]}, request_id="bad-shape")
        await stream.send({"features": features(129)}, request_id="too-many-rows")
        await stream.send(good, request_id="last")
        assert (await stream.recv())["scores"].shape == (2, 2)
        for rid, fragment in (("bad-shape", "features"), ("too-many-rows", "128")):
            with pytest.raises(InvalidArgument) as info:
                await stream.recv()
            assert info.value.request_id == rid and fragment in info.value.message
        assert (await stream.recv())["scores"].shape == (2, 2)
        # The session goes on after errors: more frames, collected by iteration this time.
        for i in range(5):
            await stream.send(good, request_id=f"more-{i}")
        await stream.done_sending()
        more: list[StreamResult] = [result async for result in stream]
    assert [r.request_id for r in more] == [f"more-{i}" for i in range(5)]
    assert all(r.error is None for r in more)


async def test_unknown_model_fails_each_frame_not_the_session(zoo_server: ServerProcess) -> None:
    async with AsyncClient(zoo_server.address) as client, client.stream("nope") as stream:
        for _ in range(3):
            await stream.send({"features": features(1)})
        for _ in range(3):
            with pytest.raises(NotFound):
                await stream.recv()


async def test_send_waits_while_max_in_flight_frames_are_unanswered(
    client_limits_server: ServerProcess,
) -> None:
    # `pair` holds a 1-row frame until another row joins it: the first frame stays unanswered
    # until this test sends its partner, however long the checks below take.
    x = {"x": np.ones((1, 1), np.float32)}
    async with AsyncClient(client_limits_server.address, default_timeout_s=120) as client:
        async with client.stream("pair", max_in_flight=1) as stream:
            await stream.send(x)
            second = asyncio.create_task(stream.send(x))
            for _ in range(10):  # loop turns for `second` to reach its wait; nothing to time
                await asyncio.sleep(0)
            assert not second.done() and stream.in_flight == 1
            partner = await client.infer("pair", x)  # runs with the first frame, a batch of 2
            first = await stream.recv()  # its answer frees the slot
            await second
            assert stream.in_flight == 1
            partner_of_last, last = await asyncio.gather(client.infer("pair", x), stream.recv())
        for result in (partner, first, partner_of_last, last):
            np.testing.assert_allclose(result["y"], np.ones((1, 1)), rtol=1e-5)
        (stats,) = (await client.model_statistics("pair")).model_stats
        assert {b.batch_size: b.compute_infer.count for b in stats.batch_stats} == {2: 2}  # held, then paired


async def test_an_answer_over_the_message_limit_fails_its_frame_alone(tmp_path: Path) -> None:
    """gRPC failed the whole stream RESOURCE_EXHAUSTED for one answer over max_message_bytes, and
    the frames after it were never answered. Now that frame fails alone, as MessageTooLarge."""
    write_model(tmp_path / "repo", "filler", filler_model(tmp_path / "filler.onnx"), None)
    limit = 64 * 1024
    args = ("--model-repository", str(tmp_path / "repo"), "--max-message-bytes", str(limit))
    with ServerProcess(*args) as server:
        async with AsyncClient(server.address) as client, client.stream("filler") as stream:
            for rid, columns in (("small", 10), ("big", 100_000), ("after", 10)):
                await stream.send({"SHAPE": np.array([1, columns], np.int64)}, request_id=rid)
            await stream.done_sending()
            results = [result async for result in stream]
    assert [r.request_id for r in results] == ["small", "big", "after"]
    assert results[0].unwrap()["Y"].shape == (1, 10) and results[2].unwrap()["Y"].shape == (1, 10)
    with pytest.raises(MessageTooLarge, match=f"vs. {limit} bytes, the server's max_message_bytes"):
        results[1].unwrap()
