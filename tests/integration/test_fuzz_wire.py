"""Near-valid requests over the wire (hypothesis, tests/support/request_strategies.py) to a real
server on 127.0.0.1: none may be answered INTERNAL or UNKNOWN, on ModelInfer, in a stream or as
mutated bytes, and the server must still serve a valid request afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from server.protocol.validate import Signature
from tests.support.fuzz_target import identity_config, mlp_config
from tests.support.request_strategies import mutated, near_valid_requests
from tests.support.server_process import ServerProcess

NOT_CLIENT_ERRORS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
TIMEOUT_S = 30.0
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


def signatures() -> list[Signature]:
    """The zoo's identity (every datatype), mlp and cached (mlp with the response cache)."""
    cached = mlp_config()
    cached.name = "cached"
    return [Signature.from_config(c) for c in (identity_config(), mlp_config(), cached)]


REQUESTS = st.sampled_from(signatures()).flatmap(near_valid_requests)


@pytest.fixture(scope="module")
def wire_channel(zoo_server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(zoo_server.address) as channel:
        yield channel


@pytest.fixture(scope="module")
def wire_stub(wire_channel: grpc.Channel) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(wire_channel)  # type: ignore[no-untyped-call]


def valid_mlp_request() -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name="mlp",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[2, 64])],
        raw_input_contents=[np.ones((2, 64), np.float32).tobytes()],
    )


def assert_serves(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    response = stub.ModelInfer(valid_mlp_request(), timeout=TIMEOUT_S)
    assert list(response.outputs[0].shape) == [2, 2] and len(response.raw_output_contents[0]) == 16


@given(request=REQUESTS)
def send_one(stub: pb_grpc.GRPCInferenceServiceStub, request: pb.ModelInferRequest) -> None:
    try:
        stub.ModelInfer(request, timeout=TIMEOUT_S)
    except grpc.RpcError as err:
        assert err.code() not in NOT_CLIENT_ERRORS, (err.code(), err.details())


@settings(max_examples=max(1, settings().max_examples // 10))
@given(requests=st.lists(REQUESTS, min_size=1, max_size=12))
def send_in_a_stream(stub: pb_grpc.GRPCInferenceServiceStub, requests: list[pb.ModelInferRequest]) -> None:
    for i, request in enumerate(requests):
        request.id = f"r{i}"  # to match answers to requests
    answers = list(stub.ModelStreamInfer(iter(requests), timeout=TIMEOUT_S))
    assert sorted(a.infer_response.id for a in answers) == sorted(r.id for r in requests)  # each once
    for answer in answers:
        assert answer.error_message.split(":", 1)[0] not in {"INTERNAL", "UNKNOWN"}, answer.error_message


def test_near_valid_requests_are_never_answered_internal_and_the_server_still_serves(
    wire_stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    send_one(wire_stub)  # hypothesis runs every example here
    assert_serves(wire_stub)


def test_near_valid_requests_in_a_stream_are_each_answered_once_never_internal(
    wire_stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    send_in_a_stream(wire_stub)
    assert_serves(wire_stub)


@settings(max_examples=max(1, settings().max_examples // 2))
@given(data=st.data())
def send_mutated_bytes(channel: grpc.Channel, data: st.DataObject) -> None:
    payload = data.draw(REQUESTS.flatmap(lambda request: mutated(request.SerializeToString())))
    infer = channel.unary_unary(MODEL_INFER)  # bytes as they are, no (de)serializers
    try:
        infer(payload, timeout=TIMEOUT_S)
    except grpc.RpcError as err:
        assert err.code() not in NOT_CLIENT_ERRORS, (err.code(), err.details())


def test_mutated_request_bytes_are_never_answered_internal(wire_channel: grpc.Channel) -> None:
    # Bytes that no longer parse are the transport's (server/protocol/malformed.py): INVALID_ARGUMENT.
    send_mutated_bytes(wire_channel)
    assert_serves(pb_grpc.GRPCInferenceServiceStub(wire_channel))  # type: ignore[no-untyped-call]


def test_raw_and_typed_contents_together_are_invalid_argument_naming_the_input(
    wire_stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    request = valid_mlp_request()
    request.inputs[0].contents.fp32_contents.extend([1.0] * 128)
    with pytest.raises(grpc.RpcError) as info:
        wire_stub.ModelInfer(request, timeout=TIMEOUT_S)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == (
        "input 'features': contents field must not be specified when using raw_input_contents"
    )
