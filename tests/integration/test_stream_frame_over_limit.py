"""A request over the server's max_message_bytes, on one small-limit server (64 KiB).

On a stream that frame alone gets a RESOURCE_EXHAUSTED error frame naming its size, the limit and
the setting, with its id, and the stream goes on: it had ended the whole stream (grpc's receive
limit), every frame after it failing too. A unary call gets the same status and message. A frame
past the hard ceiling (twice the limit) still ends its stream, with grpc's own message.
"""

from __future__ import annotations

import queue
import re
from collections.abc import Iterator

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
PAD = 96 * 1024  # bytes that make a frame over LIMIT but within the ceiling (2 * LIMIT)
TOO_LARGE = r"request message larger than max \(9\d{4} vs. 65536 bytes, the server's max_message_bytes\)"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("frame-over-limit")
    write_model(repo, "filler", filler_model(repo / "filler.onnx"), None)
    with ServerProcess("--model-repository", str(repo), "--max-message-bytes", str(LIMIT)) as process:
        yield process


def filler(columns: int, rid: str, pad: int = 0) -> pb.ModelInferRequest:
    """A request for a [1, columns] answer; `pad` bytes more in a tensor it does not name (never
    parsed when the message is over the limit)."""
    request = pb.ModelInferRequest(
        model_name="filler",
        id=rid,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="SHAPE", datatype="INT64", shape=[2])],
        raw_input_contents=[np.array([1, columns], np.int64).tobytes()],
    )
    if pad:
        request.raw_input_contents.append(b"\0" * pad)
    return request


async def test_a_frame_over_the_limit_fails_alone_and_the_stream_goes_on(server: ServerProcess) -> None:
    async with AsyncClient(server.address) as client, client.stream("filler") as stream:
        await stream.send({"SHAPE": np.array([1, 3], np.int64)}, request_id="before")
        # 12,000 int64 values: a frame of about 96 KB, over the server's 64 KiB.
        await stream.send({"SHAPE": np.zeros(12_000, np.int64)}, request_id="big")
        await stream.send({"SHAPE": np.array([1, 4], np.int64)}, request_id="after")
        await stream.done_sending()
        results = [result async for result in stream]
    assert [r.request_id for r in results] == ["before", "big", "after"]
    assert results[0].unwrap()["Y"].shape == (1, 3)
    assert results[2].unwrap()["Y"].shape == (1, 4)
    with pytest.raises(MessageTooLarge, match=TOO_LARGE):
        results[1].unwrap()


def test_the_error_frame_carries_the_frames_id_and_final_flag(server: ServerProcess) -> None:
    big = filler(3, "big-id", pad=PAD)
    big.model_version = "1"
    big.parameters["triton_enable_empty_final_response"].bool_param = True
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        frames = list(stub.ModelStreamInfer(iter([big, filler(2, "after")]), timeout=60))
    assert len(frames) == 2, frames
    refused, answered = frames
    assert refused.error_message.startswith("RESOURCE_EXHAUSTED: request message larger than max (")
    assert "vs. 65536 bytes, the server's max_message_bytes" in refused.error_message
    head = refused.infer_response
    assert (head.id, head.model_name, head.model_version) == ("big-id", "filler", "1")
    assert head.parameters["triton_final_response"].bool_param  # tritonclient waits for it
    assert not answered.error_message and answered.infer_response.id == "after"


def test_tritonclients_stream_gets_the_error_for_that_frame_alone(server: ServerProcess) -> None:
    answers: queue.Queue[tuple[object, object]] = queue.Queue()
    client = triton_grpc.InferenceServerClient(server.address)
    try:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        for rid, values in (("big", np.zeros(12_000, np.int64)), ("after", np.array([1, 3], np.int64))):
            shape = triton_grpc.InferInput("SHAPE", [len(values)], "INT64")
            shape.set_data_from_numpy(values)
            client.async_stream_infer("filler", [shape], request_id=rid)
        got = [answers.get(timeout=60) for _ in range(2)]
        client.stop_stream()
    finally:
        client.close()
    (nothing, error), (result, no_error) = got
    assert nothing is None and "RESOURCE_EXHAUSTED" in str(error), error
    assert "vs. 65536 bytes, the server's max_message_bytes" in str(error), error
    assert no_error is None and result.as_numpy("Y").shape == (1, 3)  # type: ignore[attr-defined]


def test_a_unary_request_over_the_limit_names_its_size_and_the_setting(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(filler(3, "unary", pad=PAD), timeout=30)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value
        assert info.value.details().startswith("request message larger than max (9"), info.value.details()
        assert "vs. 65536 bytes, the server's max_message_bytes" in info.value.details()
        answer = stub.ModelInfer(filler(2, "next"), timeout=30)  # the server is unaffected
    assert answer.id == "next"


def test_a_frame_past_the_ceiling_still_ends_its_stream(server: ServerProcess) -> None:
    """Documented: past twice max_message_bytes grpc itself refuses the message, ending the call."""
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            list(stub.ModelStreamInfer(iter([filler(3, "huge", pad=3 * LIMIT)]), timeout=60))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value
    assert "vs. 131072)" in (info.value.details() or ""), info.value.details()


def test_health_and_reflection_refuse_a_request_over_the_limit_too(server: ServerProcess) -> None:
    """grpc's own services had only the ceiling (twice the limit): a 70 KB Health request was
    processed, and a reflection request's echo went over the send limit and ended its stream."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    name = "s" * (LIMIT + 1000)
    over = rf"^request message larger than max \(\d+ vs. {LIMIT} bytes, the server's max_message_bytes\)$"
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for call in (health.Check, lambda r, timeout: next(iter(health.Watch(r, timeout=timeout)))):
            with pytest.raises(grpc.RpcError) as refused:
                call(health_pb2.HealthCheckRequest(service=name), timeout=30)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert re.match(over, refused.value.details() or ""), refused.value.details()
        ok = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert ok.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [reflection_pb2.ServerReflectionRequest(file_by_filename=name)]
        with pytest.raises(grpc.RpcError) as refused:
            list(reflect.ServerReflectionInfo(iter(requests), timeout=30))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert re.match(over, refused.value.details() or ""), refused.value.details()
        listed = reflection_pb2.ServerReflectionRequest(list_services="")
        answers = list(reflect.ServerReflectionInfo(iter([listed]), timeout=30))
        assert "inference.GRPCInferenceService" in {s.name for s in answers[0].list_services_response.service}


def test_health_and_reflection_answer_a_malformed_request_invalid_argument(server: ServerProcess) -> None:
    """grpc's own deserializer answered UNKNOWN and logged a 10-line traceback per message; health
    takes no token, so anyone could fill the log (~1.4 MiB/s from one client, a tester's flood)."""
    garbage = b"\xff\xff\xff"
    identity = lambda data: data  # noqa: E731  # the bytes as they are
    with grpc.insecure_channel(server.address) as channel:
        calls = {
            "Check": channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=identity),
            "Watch": lambda data, timeout: next(
                iter(
                    channel.unary_stream("/grpc.health.v1.Health/Watch", request_serializer=identity)(
                        data, timeout=timeout
                    )
                )
            ),
            "reflection": lambda data, timeout: list(
                channel.stream_stream(
                    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                    request_serializer=identity,
                )(iter([data]), timeout=timeout)
            ),
        }
        for name, call in calls.items():
            with pytest.raises(grpc.RpcError) as refused:
                call(garbage, timeout=30)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, refused.value.details())
            assert "not a valid grpc." in (refused.value.details() or ""), (name, refused.value.details())
