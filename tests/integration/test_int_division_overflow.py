"""A client's INT_MIN / -1 over a real server. x86 `idiv` traps on that overflow as on a zero
divisor, and no onnxruntime checks it (1.23 and 1.31 alike end the process with SIGFPE): the guard
(server/backends/int_division_guard.py) answers INVALID_ARGUMENT for a Div, and a Mod gets its exact
answer (x mod -1 is 0); the server lives on, on every onnxruntime."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from clients import tensors
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.division_models import int_div_repository, int_mod64
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess

BOUND_S = 60.0  # generous: a bound on a test that fails, never a measure
MIN32 = np.iinfo(np.int32).min
MIN64 = np.iinfo(np.int64).min
GOOD = {"x": np.asarray([7, -9, 100], np.int32), "y": np.asarray([2, 4, -7], np.int32)}
MOD_CONFIG = """
max_batch_size: 0
input [ { name: "a" data_type: TYPE_INT64 dims: [ 3 ] }, { name: "b" data_type: TYPE_INT64 dims: [ 3 ] } ]
output [ { name: "r" data_type: TYPE_INT64 dims: [ 3 ] } ]
"""


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    files = tmp_path / "files"
    repo = int_div_repository(tmp_path / "repo", files)
    write_model(repo, "mod64", int_mod64(files / "mod64.onnx"), MOD_CONFIG)
    with ServerProcess("--model-repository", str(repo)) as running:
        yield running


def test_int_min_over_minus_one_is_refused_and_the_server_lives(server: ServerProcess) -> None:
    overflow = {"x": np.asarray([7, MIN32, 100], np.int32), "y": np.asarray([2, -1, -7], np.int32)}
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(tensors.build_request("div", overflow), timeout=BOUND_S)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
        assert "overflow" in str(info.value.details()) and "Div_xy" in str(info.value.details())
        mod = {"a": np.asarray([MIN64, 7, -7], np.int64), "b": np.asarray([-1, -1, 3], np.int64)}
        answer = stub.ModelInfer(tensors.build_request("mod64", mod), timeout=BOUND_S)
        assert tensors.decode_response(answer)["r"].tolist() == [0, 0, 2]  # Python's (and ONNX's) mod
        answer = stub.ModelInfer(tensors.build_request("div", GOOD), timeout=BOUND_S)
        assert tensors.decode_response(answer)["q"].tolist() == [3, -2, -14]
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=BOUND_S).live
    assert server.process is not None and server.process.poll() is None
