"""The clients against real servers, used carelessly: a load on a server that refuses loads, a
client closed under a call, a frame over the message limit, a frame to a frozen server."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from clients import (
    AsyncClient,
    ChannelOptions,
    Client,
    DeadlineExceeded,
    MessageTooLarge,
    SluicewayError,
    Unavailable,
)
from tests.integration import client_fixtures
from tests.integration.client_fixtures import features
from tests.support.models import constant_model
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess, wait_until

start_demo_server = client_fixtures.start_demo_server


def test_a_refused_load_is_not_retried_and_leaves_the_endpoint_healthy(zoo_server: ServerProcess) -> None:
    """Mode none refuses loads UNAVAILABLE: the client retried it, then shunned a healthy server."""
    with Client(zoo_server.address) as client:
        with pytest.raises(Unavailable, match="not allowed"):
            client.load_model("mlp")
        assert client.endpoint_health() == {zoo_server.address: True}
        assert client.infer("mlp", {"features": features(1)})


def in_flight(server: ServerProcess, model: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    prefix = f'sluiceway_batches_in_flight{{model="{model}",version="1"}} '
    return sum(float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix))


HANGS = """max_batch_size: 8
instance_group [ { count: 1 kind: KIND_CPU } ]
parameters { key: "fault_hang_every" value: { string_value: "1" } }
parameters { key: "fault_hang_s" value: { string_value: "5" } }
"""


async def test_closing_an_async_client_under_a_call_fails_it_with_a_client_error(
    demo_repo: Path, tmp_path: Path
) -> None:
    """The call's task got a bare CancelledError though nobody cancelled it."""
    write_model(tmp_path / "repo", "hangs", demo_repo / "mlp" / "1" / "model.onnx", HANGS)
    args = (
        "--model-repository",
        str(tmp_path / "repo"),
        "--allow-fault-injection",
        "--shutdown-grace-s",
        "0",
    )
    with ServerProcess(*args) as server:
        client = AsyncClient(server.address)
        call = asyncio.create_task(client.infer("hangs", {"features": features(1)}, timeout_s=60))
        await asyncio.to_thread(wait_until, lambda: in_flight(server, "hangs") >= 1, "the call to run")
        await client.close()
        with pytest.raises(SluicewayError) as caught:
            await call
    assert caught.value.code == grpc.StatusCode.CANCELLED and "closed" in caught.value.message


def test_closing_a_sync_client_under_a_call_in_another_thread_fails_it_with_a_client_error(
    demo_repo: Path, tmp_path: Path
) -> None:
    """The closed channel's CANCELLED was retried as the server's, and the retry raised a bare
    RuntimeError("the client is closed"); AsyncClient said CANCELLED, as documented."""
    write_model(tmp_path / "repo", "hangs", demo_repo / "mlp" / "1" / "model.onnx", HANGS)
    args = (
        "--model-repository",
        str(tmp_path / "repo"),
        "--allow-fault-injection",
        "--shutdown-grace-s",
        "0",
    )
    outcome: list[BaseException] = []

    with ServerProcess(*args) as server:
        client = Client(server.address)

        def call() -> None:
            try:
                client.infer("hangs", {"features": features(1)}, timeout_s=60)
            except BaseException as exc:  # checked below, in the test's thread
                outcome.append(exc)

        caller = threading.Thread(target=call)
        caller.start()
        wait_until(lambda: in_flight(server, "hangs") >= 1, "the call to run")
        client.close()
        caller.join(60)
        assert not caller.is_alive()
    (error,) = outcome
    assert type(error) is SluicewayError, repr(error)
    assert (
        error.code == grpc.StatusCode.CANCELLED and error.message == "the client was closed during the call"
    )
    with pytest.raises(RuntimeError, match="the client is closed"):  # a call made after close()
        client.server_live()


def test_an_async_client_serves_one_asyncio_run_after_another(zoo_server: ServerProcess) -> None:
    """The second `asyncio.run` failed with "Event loop is closed" from inside grpc: the channels
    belonged to the first loop. A second loop while the first is open is refused, saying so."""
    client = AsyncClient(zoo_server.address)

    async def scores() -> tuple[int, ...]:
        return (await client.infer("mlp", {"features": features(2)}, timeout_s=10))["scores"].shape

    assert asyncio.run(scores()) == asyncio.run(scores()) == (2, 2)
    first = asyncio.new_event_loop()
    try:
        first.run_until_complete(scores())
        with pytest.raises(RuntimeError, match="another event loop that is still open"):
            asyncio.run(scores())
        assert first.run_until_complete(scores()) == (2, 2)  # the first loop's channels still serve
        first.run_until_complete(client.close())
    finally:
        first.close()


async def test_a_frame_over_the_message_limit_fails_alone(zoo_server: ServerProcess) -> None:
    """Sent, it ended the whole stream INTERNAL ("Internal error from Core") with the frame before it."""
    client = AsyncClient(zoo_server.address, channel_options=ChannelOptions(max_message_bytes=8192))
    async with client, client.stream("mlp") as stream:
        first = await stream.send({"features": features(1)})
        with pytest.raises(MessageTooLarge, match="over max_message_bytes"):
            await stream.send({"features": features(64)})  # 16 KiB of inputs
        second = await stream.send({"features": features(2)})
        results = [await stream.recv_result() for _ in range(2)]
    assert [r.request_id for r in results] == [first, second]
    assert all(r.error is None for r in results)


async def test_a_frame_to_a_frozen_server_fails_after_its_timeout(
    start_demo_server: Callable[[], ServerProcess], tmp_path: Path
) -> None:
    """recv() waited out the stream's hour: a frame's timeout was the server's to keep."""
    server = start_demo_server()
    async with AsyncClient(server.address) as client, client.stream("mlp", frame_timeout_s=0.5) as stream:
        assert await stream.send({"features": features(1)})
        assert (await stream.recv())["scores"].shape == (1, 2)
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            await stream.send({"features": features(1)})
            with pytest.raises(DeadlineExceeded, match="no answer within the frame's timeout"):
                await asyncio.wait_for(stream.recv(), timeout=60)  # bounded, should it hang
        finally:
            os.kill(server.process.pid, signal.SIGCONT)


POISON = """max_batch_size: 8
instance_group [ { count: 1 kind: KIND_CPU } ]
parameters { key: "fault_hang_every" value: { string_value: "1" } }
parameters { key: "fault_hang_s" value: { string_value: "30" } }
parameters { key: "run_timeout_s" value: { string_value: "0.5" } }
"""


def test_a_request_the_watchdog_cut_is_not_sent_again(demo_repo: Path, tmp_path: Path) -> None:
    """It was retried (UNAVAILABLE) on every endpoint, each retry hanging and killing another
    instance: the server's answer now says RUN_TIMED_OUT (google.rpc.ErrorInfo), not to be retried."""
    write_model(tmp_path / "repo", "poison", demo_repo / "mlp" / "1" / "model.onnx", POISON)
    args = ("--model-repository", str(tmp_path / "repo"), "--allow-fault-injection")
    with ServerProcess(*args) as server, Client(server.address) as client:
        with pytest.raises(Unavailable) as caught:
            client.infer("poison", {"features": features(1)}, timeout_s=30)
        assert caught.value.reason == "RUN_TIMED_OUT"
        [stats] = client.model_statistics("poison").model_stats
        assert stats.execution_count == 0 and stats.inference_stats.fail.count == 1  # sent once
        assert client.endpoint_health() == {server.address: True}  # the model's fault, not the server's


def test_a_model_without_inputs_is_called_with_none(tmp_path: Path) -> None:
    """`infer(model, {})` raised ValueError in the client, though the server and tritonclient
    serve such a model."""
    write_model(tmp_path / "repo", "constant", constant_model(tmp_path / "c.onnx"), None)
    with (
        ServerProcess("--model-repository", str(tmp_path / "repo")) as server,
        Client(server.address) as client,
    ):
        assert client.infer("constant", {}, timeout_s=10)["Y"].tolist() == [1.0, 2.0]
