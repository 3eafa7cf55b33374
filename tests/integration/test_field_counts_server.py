"""A request holding far more parameters, tensors or typed contents' fields than any model takes is
refused before it is parsed, unary or on a stream, and the server goes on serving
(server/protocol/field_counts.py). One such request (63 MiB of parameters) had held the event loop,
and every other call, 2.6 s; 62 MiB of one-byte strings in typed contents ~1 s. Other methods'
requests are counted by their schema (server/protocol/message_fields.py): a RepositoryModelLoad of
4 million parameter entries had held them 4.9 s."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton

from clients import Client
from loadtest import crowded_request
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from server.protocol.field_counts import MAX_PARAMETERS, MAX_TENSORS
from tests.support.server_process import ServerProcess


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess("--model-control-mode", "explicit", "--load-model", "mlp") as running:
        yield running


def _mlp(rid: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="mlp", id=rid)
    request.inputs.add(name="features", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(np.ones((1, 64), np.float32).tobytes())
    return request


def _crowded(kind: str) -> pb.ModelInferRequest:
    request = _mlp("crowded")
    if kind == "parameters":
        for i in range(100_000):
            request.parameters[f"k{i}"].int64_param = i
    elif kind == "outputs":
        for _ in range(100_000):
            request.outputs.add(name="scores")
    else:  # a tensor's own parameters
        for i in range(100_000):
            request.inputs[0].parameters[f"k{i}"].int64_param = i
    return request


SAID = {
    "parameters": f"the request has more than {MAX_PARAMETERS} parameters (the server's bound)",
    "outputs": f"the request has more than {MAX_TENSORS} outputs (the server's bound)",
    "input parameters": f"input 0 of the request has more than {MAX_PARAMETERS} parameters",
}


@pytest.mark.parametrize("kind", list(SAID))
def test_a_crowded_request_is_invalid_argument_unary_and_the_next_is_served(
    server: ServerProcess, kind: str
) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(_crowded(kind), timeout=60)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert SAID[kind] in (caught.value.details() or "")
        assert stub.ModelInfer(_mlp("after"), timeout=60).id == "after"


def test_a_crowded_frame_is_an_error_frame_and_the_stream_goes_on(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        answers = list(stub.ModelStreamInfer(iter([_crowded("outputs"), _mlp("next")]), timeout=60))
    assert len(answers) == 2
    errors = [a for a in answers if a.error_message]
    assert len(errors) == 1 and SAID["outputs"] in errors[0].error_message
    assert [a.infer_response.id for a in answers if not a.error_message] == ["next"]


def test_tritonclient_and_our_client_are_served_beside_it(server: ServerProcess) -> None:
    features = np.ones((2, 64), np.float32)
    assert Client(server.address).infer("mlp", {"features": features})["scores"].shape == (2, 2)
    with triton.InferenceServerClient(server.address) as tc:
        given = triton.InferInput("features", [2, 64], "FP32")
        given.set_data_from_numpy(features)
        result = tc.infer("mlp", [given], parameters={f"p{i}": i for i in range(8)})
        assert result.as_numpy("scores").shape == (2, 2)


@pytest.mark.parametrize("kind", ["parameters", *crowded_request.KINDS])
def test_the_benchmarks_short_mode_is_refused_unparsed_and_the_probe_answered(
    server: ServerProcess, kind: str
) -> None:
    # Each kind past its bound at 3 MiB (a million one-byte strings or keys, 3 million varints,
    # a million unknown fields): refused before protobuf parses it, naming the bound.
    stall = asyncio.run(crowded_request.measure(server.address, 3.0, kind))
    assert stall.status.startswith("INVALID_ARGUMENT: request is not parsed"), stall.status
    assert "(the server's bound" in stall.status, stall.status
    assert stall.request_bytes > 2.9 * 2**20 and stall.slowest_live_s > 0


def test_strings_within_the_bound_are_served_as_before(server: ServerProcess) -> None:
    # 100,000 strings in typed contents (the walk's common case) reach the model's own checks.
    request = pb.ModelInferRequest(model_name="mlp", id="strings")
    request.inputs.add(name="features", datatype="BYTES", shape=[100_000])
    request.inputs[0].contents.bytes_contents.extend([b"s"] * 100_000)
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request, timeout=60)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "BYTES does not match the model's FP32" in (caught.value.details() or "")
        assert stub.ModelInfer(_mlp("after"), timeout=60).id == "after"


def test_the_benchmarks_crowded_frames_are_each_refused_and_the_stream_answers_every_one(
    server: ServerProcess,
) -> None:
    times = asyncio.run(crowded_request.frame_times(server.address, count=2, many=2000))
    assert len(times) == 6
    for name, (_, _, said) in times.items():
        assert said.startswith("INVALID_ARGUMENT"), (name, said)
