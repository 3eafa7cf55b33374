"""A client's zero divisor over a real server: an integer Div by zero is the request's fault
(INVALID_ARGUMENT naming it), and the server process lives on. On onnxruntime before 1.31 (the
Python 3.10 build) such a division ended the whole process with SIGFPE, and every request in flight
with it; the server now guards those divisions (server/backends/int_division_guard.py). On 1.31
onnxruntime raises, which the server now answers as the inputs' fault, not INTERNAL."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from clients import tensors
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.division_models import int_div_repository
from tests.support.server_process import ServerProcess, wait_until

BOUND_S = 60.0  # generous: a bound on a test that fails, never a measure
GOOD = {"x": np.asarray([7, -9, 100], np.int32), "y": np.asarray([2, 4, -7], np.int32)}
ZERO = {"x": np.asarray([7, -9, 100], np.int32), "y": np.asarray([2, 0, -7], np.int32)}
QUOTIENT = [3, -2, -14]  # truncated toward zero, as ONNX's Div on integers


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = int_div_repository(tmp_path_factory.mktemp("div"), tmp_path_factory.mktemp("div-files"))
    with ServerProcess("--model-repository", str(repo)) as running:
        yield running


@pytest.fixture()
def stub(server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def test_a_zero_divisor_is_refused_and_the_requests_beside_it_are_answered(
    server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    good = [stub.ModelInfer.future(tensors.build_request("div", GOOD), timeout=BOUND_S) for _ in range(8)]
    zero = stub.ModelInfer.future(tensors.build_request("div", ZERO), timeout=BOUND_S)
    after = [stub.ModelInfer.future(tensors.build_request("div", GOOD), timeout=BOUND_S) for _ in range(8)]
    with pytest.raises(grpc.RpcError) as info:
        zero.result()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    details = str(info.value.details())
    assert "division by zero" in details.lower() and "'div'" in details and "Div_xy" in details
    for future in (*good, *after):
        assert tensors.decode_response(future.result())["q"].tolist() == QUOTIENT
    assert server.process is not None and server.process.poll() is None
    live = stub.ServerLive(pb.ServerLiveRequest(), timeout=BOUND_S)
    ready = stub.ModelReady(pb.ModelReadyRequest(name="div"), timeout=BOUND_S)
    assert live.live and ready.ready
    answer = stub.ModelInfer(tensors.build_request("div", GOOD), timeout=BOUND_S)
    assert tensors.decode_response(answer)["q"].tolist() == QUOTIENT
    # Logged once, as a refused batch (WARNING), whichever onnxruntime answered.
    wait_until(lambda: "division by zero" in server.output().lower(), "the refusal's log line", BOUND_S)


def test_the_model_shows_only_its_own_output(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="div"), timeout=BOUND_S)
    assert [t.name for t in meta.outputs] == ["q"]
    answer = stub.ModelInfer(tensors.build_request("div", GOOD), timeout=BOUND_S)
    assert [t.name for t in answer.outputs] == ["q"]


def test_tritonclient_gets_invalid_argument_for_a_zero_divisor(server: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(url=server.address)
    try:

        def inputs(feed: dict[str, np.ndarray]) -> list[grpcclient.InferInput]:
            made = []
            for name, array in feed.items():
                tensor = grpcclient.InferInput(name, list(array.shape), "INT32")
                tensor.set_data_from_numpy(array)
                made.append(tensor)
            return made

        with pytest.raises(InferenceServerException) as info:
            client.infer("div", inputs(ZERO), client_timeout=BOUND_S)
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "division by zero" in str(info.value.message()).lower()
        result = client.infer("div", inputs(GOOD), client_timeout=BOUND_S)
        assert result.as_numpy("q").tolist() == QUOTIENT
        assert client.is_server_live() and client.is_model_ready("div")
    finally:
        client.close()
