"""Answers that fail after their run, counted as what they are, on one small-limit server.

An answer over max_message_bytes: on a stream that frame alone fails RESOURCE_EXHAUSTED naming its
size and the limit, and the stream goes on; a unary call gets the same status and message (it had
gRPC's "Sent message larger than max"). Either had been counted a success. An output of variable
shape too large for its shared-memory region: counted in `fail` only (it had also been in queue,
compute and inference_count); its run stays in execution_count.
"""

from __future__ import annotations

import queue
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc

from clients import AsyncClient, MessageTooLarge
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.models import filler_model
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess

LIMIT = 64 * 1024
BIG = 100_000  # columns of 4 bytes: an answer of 400 KB, over LIMIT
SHM = Path("/dev/shm")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("answer-limits")
    # One instance, as before Triton's default of 2 (session 45): the tests read the answers of a
    # stream's frames in the order they were sent, which two instances could finish either way.
    one = "instance_group [ { count: 1 kind: KIND_CPU } ]\n"
    write_model(repo, "filler", filler_model(repo / "filler.onnx"), one)
    args = ("--model-repository", str(repo), "--max-message-bytes", str(LIMIT), "--allow-client-shm")
    with ServerProcess(*args) as process:
        yield process


def counts(stub: pb_grpc.GRPCInferenceServiceStub) -> dict[str, int]:
    (stats,) = stub.ModelStatistics(pb.ModelStatisticsRequest(name="filler"), timeout=30).model_stats
    s = stats.inference_stats
    return {
        "success": s.success.count,
        "fail": s.fail.count,
        "queue": s.queue.count,
        "compute": s.compute_infer.count,
        "inference_count": stats.inference_count,
        "execution_count": stats.execution_count,
    }


def failures_on_metrics(server: ServerProcess) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=30) as page:
        text = page.read().decode()
    prefix = "nv_inference_request_failure{"
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(prefix) and 'model="filler"' in line
    )


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {key: after[key] - before[key] for key in before}


@pytest.fixture
def stub(server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def filler(columns: int, rid: str = "") -> pb.ModelInferRequest:
    shape = np.array([1, columns], np.int64)
    return pb.ModelInferRequest(
        model_name="filler",
        id=rid,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="SHAPE", datatype="INT64", shape=[2])],
        raw_input_contents=[shape.tobytes()],
    )


async def test_a_stream_answer_over_the_limit_is_a_failure_and_the_stream_goes_on(
    server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    before, failed_before = counts(stub), failures_on_metrics(server)
    async with AsyncClient(server.address) as client, client.stream("filler") as stream:
        for rid, columns in (("small", 10), ("big", BIG), ("after", 10)):
            await stream.send({"SHAPE": np.array([1, columns], np.int64)}, request_id=rid)
        await stream.done_sending()
        results = [result async for result in stream]
    assert [r.request_id for r in results] == ["small", "big", "after"]
    assert results[2].unwrap()["Y"].shape == (1, 10)
    with pytest.raises(MessageTooLarge, match=r"answer message larger than max \(4000\d\d vs. 65536 bytes"):
        results[1].unwrap()
    moved = delta(before, counts(stub))
    assert (moved["success"], moved["fail"]) == (2, 1), moved  # had been 3 successes, 0 failures
    assert (moved["queue"], moved["compute"], moved["inference_count"]) == (2, 2, 2), moved
    assert moved["execution_count"] == 3, moved
    assert failures_on_metrics(server) - failed_before == 1


def test_tritonclients_stream_gets_the_error_for_that_frame_and_goes_on(server: ServerProcess) -> None:
    answers: queue.Queue[tuple[object, object]] = queue.Queue()
    client = triton_grpc.InferenceServerClient(server.address)
    try:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        for rid, columns in (("big", BIG), ("after", 3)):
            shape = triton_grpc.InferInput("SHAPE", [2], "INT64")
            shape.set_data_from_numpy(np.array([1, columns], np.int64))
            client.async_stream_infer("filler", [shape], request_id=rid)
        got = [answers.get(timeout=60) for _ in range(2)]
        client.stop_stream()
    finally:
        client.close()
    (_, error), (result, no_error) = got
    assert "RESOURCE_EXHAUSTED" in str(error) and "vs. 65536 bytes" in str(error), error
    assert no_error is None and result.as_numpy("Y").shape == (1, 3)  # type: ignore[attr-defined]


def test_a_unary_answer_over_the_limit_fails_as_a_streams_does(
    server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    before = counts(stub)
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(filler(BIG), timeout=30)
    err = info.value
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
    assert "answer message larger than max (4000" in (err.details() or ""), err.details()
    assert "vs. 65536 bytes, the server's max_message_bytes" in (err.details() or ""), err.details()
    moved = delta(before, counts(stub))
    assert (moved["success"], moved["fail"], moved["inference_count"]) == (0, 1, 0), moved


def test_a_variable_output_too_large_for_its_region_is_counted_in_fail_alone(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    key = f"sluiceway_it_{uuid.uuid4().hex[:12]}"
    (SHM / key).write_bytes(b"\0" * 64)
    try:
        stub.SystemSharedMemoryRegister(
            pb.SystemSharedMemoryRegisterRequest(name=key, key="/" + key, byte_size=64), timeout=30
        )
        request = filler(32)  # 128 bytes of output: known only once computed
        request.outputs.add(name="Y").parameters["shared_memory_region"].string_param = key
        request.outputs[0].parameters["shared_memory_byte_size"].int64_param = 64
        before = counts(stub)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "(64 bytes) should be at least 128 bytes" in (info.value.details() or "")
        moved = delta(before, counts(stub))
        # It had been counted in queue, compute and inference_count too (1 each).
        assert moved == {
            "success": 0, "fail": 1, "queue": 0, "compute": 0, "inference_count": 0, "execution_count": 1
        }, moved  # fmt: skip
    finally:
        stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name=key), timeout=30)
        (SHM / key).unlink(missing_ok=True)


def test_a_classified_answer_over_the_limit_is_counted_in_fail_alone(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    """A request classifying its output (top 20,000 classes of 20,000) whose answer is over the
    limit: refused before its run is counted, naming its exact size (it had been counted in queue,
    compute and inference_count as well as fail: classified outputs were not sized)."""
    request = filler(20_000)
    request.outputs.add(name="Y").parameters["classification"].int64_param = 20_000
    classes = [f"1.500000:{i}".encode() for i in range(20_000)]  # ties: lower index first
    answer = pb.ModelInferResponse(model_name="filler", model_version="1", raw_output_contents=[
        b"".join(len(c).to_bytes(4, "little") + c for c in classes)
    ])  # fmt: skip
    answer.outputs.add(name="Y", datatype="BYTES", shape=[20_000])  # no batch dimension: [k]
    before = counts(stub)
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value
    assert f"answer message larger than max ({answer.ByteSize()} vs. 65536" in (info.value.details() or "")
    moved = delta(before, counts(stub))
    assert moved == {
        "success": 0, "fail": 1, "queue": 0, "compute": 0, "inference_count": 0, "execution_count": 1
    }, moved  # fmt: skip
