"""Answers a stream made but never wrote because its call ended first: counted, and logged.

A frame over grpc's hard ceiling (twice max_message_bytes) ends its stream in grpc itself, as a
client's cancel does. The answers the server had made by then (counted a success or a failure)
were lost silently: a client got 1-2 of 3 answers counted successes. Each is now counted in
`sluiceway_stream_answers_dropped_total{reason}` of the version it was counted in, success and
fail are never taken back, and one line names how many and why.

Answers are held deterministically: the model keeps its order (preserve_ordering), and its second
run hangs (fault injection), so the answers made at once after that request (a cache hit, counted
a success, and a refusal, counted a failure) wait unwritten behind it until the call ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.metrics_page import metrics_lines
from tests.support.models import scale_model
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess, wait_until, wait_until_async

LIMIT = 64 * 1024
# Its second run hangs until the instance closes (the server's stop), far past any test.
HELD = """max_batch_size: 8
instance_group [ { count: 1 kind: KIND_CPU } ]
dynamic_batching { preserve_ordering: true }
response_cache { enable: true }
parameters { key: "fault_hang_every" value: { string_value: "2" } }
parameters { key: "fault_hang_s" value: { string_value: "600" } }
"""
MODELS = ("held_ceiling", "held_cancel", "plain")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("stream-ceiling-loss")
    onnx_file = scale_model(repo / "scale.onnx", 2.0)
    for name in MODELS:
        write_model(repo, name, onnx_file, f'name: "{name}"\n' + (HELD if name != "plain" else ""))
    args = ("--model-repository", str(repo), "--max-message-bytes", str(LIMIT), "--allow-fault-injection",
            "--response-cache-bytes", "1000000", "--shutdown-grace-s", "0")  # fmt: skip
    with ServerProcess(*args) as process:
        yield process


def request(model: str, rid: str, value: float, columns: int = 4, pad: int = 0) -> pb.ModelInferRequest:
    r = pb.ModelInferRequest(
        model_name=model,
        id=rid,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, columns])],
        raw_input_contents=[np.full((1, columns), value, np.float32).tobytes()],
    )
    if pad:
        r.raw_input_contents.append(b"\0" * pad)  # never parsed: the frame is refused first
    return r


def statistics(server: ServerProcess, model: str) -> pb.InferStatistics:
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        answer = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=30)
    return answer.model_stats[0].inference_stats


def dropped(server: ServerProcess, model: str) -> dict[str, float]:
    """`model`'s sluiceway_stream_answers_dropped_total by reason (absent: {})."""
    prefix = f'sluiceway_stream_answers_dropped_total{{model="{model}",reason="'
    return {
        line[len(prefix) :].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics_lines(server)
        if line.startswith(prefix)
    }


async def hold_two_answers(model: str, stub: pb_grpc.GRPCInferenceServiceStub) -> Any:
    """A stream (grpc.aio's call) with a request hung in its run and, behind it, two answers made
    and not written: a cache hit (counted a success) and a refused shape (counted a failure)."""
    await stub.ModelInfer(request(model, "prime", 1.0), timeout=30)  # run 1: cached
    call = stub.ModelStreamInfer(timeout=60)
    await call.write(request(model, "hangs", 3.0))  # run 2 hangs
    await call.write(request(model, "hit", 1.0))  # answered from the cache at once, held in order
    await call.write(request(model, "refused", 1.0, columns=3))  # INVALID_ARGUMENT at once, held

    async def both_counted() -> bool:
        answer = await stub.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=30)
        s = answer.model_stats[0].inference_stats
        return bool(s.cache_hit.count == 1 and s.fail.count == 1)

    await wait_until_async(both_counted, "the cache hit and the refusal counted")
    return call


async def test_answers_held_when_a_frame_over_the_ceiling_ends_the_stream_are_counted_unsent(
    server: ServerProcess,
) -> None:
    model = "held_ceiling"
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        call = await hold_two_answers(model, stub)
        await call.write(request(model, "huge", 1.0, pad=3 * LIMIT))  # past the ceiling (2 * LIMIT)
        got = []
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            async for answer in call:
                got.append(answer)
    assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, ended.value
    assert "vs. 131072)" in (ended.value.details() or "")
    assert got == []  # the two answers made were never written
    server.wait_for_output("ended with 2 answers not written (1 counted successes, 1 counted failures")
    assert dropped(server, model)["cancelled"] == 2
    s = statistics(server, model)
    assert (s.success.count, s.fail.count) == (2, 1)  # the prime and the hit; never taken back
    assert "grpc's hard ceiling of 131072 bytes" in server.output()


async def test_answers_held_when_the_client_cancels_are_counted_unsent(server: ServerProcess) -> None:
    model = "held_cancel"
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        call = await hold_two_answers(model, stub)
        call.cancel()
    wait_until(lambda: dropped(server, model).get("cancelled") == 2, "two answers counted unsent")
    s = statistics(server, model)
    assert (s.success.count, s.fail.count) == (2, 1)


async def test_a_frame_over_the_limit_but_under_the_ceiling_loses_no_answer(server: ServerProcess) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        call = stub.ModelStreamInfer(timeout=60)
        await call.write(request("plain", "before", 1.0))
        await call.write(request("plain", "big", 1.0, pad=LIMIT + 1000))  # refused alone
        await call.write(request("plain", "after", 1.0))
        await call.done_writing()
        ids = [answer.infer_response.id async for answer in call]
    assert sorted(ids) == ["after", "before", "big"]
    assert set(dropped(server, "plain").values()) == {0.0}
