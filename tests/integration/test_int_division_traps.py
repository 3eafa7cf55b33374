"""Divisions x86 `idiv` traps on, past what the first guard covered, over a real server: a client's
INT_MIN / -1 (no onnxruntime checks it: 1.23 and 1.31 alike ended the process with SIGFPE), and a
zero divisor reaching a Div inside an If or Loop body. The guard (server/backends/int_division_guard.py)
answers INVALID_ARGUMENT naming the node, a Mod by -1 gets its exact answer (x mod -1 is 0), and the
server lives on, on every onnxruntime."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from clients import tensors
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.division_models import (
    DIV_CONFIG,
    SUBGRAPH_CONFIG,
    external_data_div,
    int_div_repository,
    int_mod64,
    subgraph_divisions,
)
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
    write_model(repo, "subgraphs", subgraph_divisions(files / "subgraphs.onnx"), SUBGRAPH_CONFIG)
    external_data_div(repo / "ext" / "1" / "model.onnx")  # its w.bin beside it, as a repository holds it
    (repo / "ext" / "config.pbtxt").write_text(DIV_CONFIG)
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


@pytest.mark.parametrize(
    ("x", "node"),
    [([100, -50, 7], "Div_then"), ([-100, -50, 7], "Div_loop")],  # sum(x) > 0 takes the If's Div
)
def test_a_zero_divisor_inside_a_subgraph_is_refused_and_the_server_lives(
    server: ServerProcess, x: list[int], node: str
) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        zero = {"x": np.asarray(x, np.int32), "y": np.asarray([3, 0, -2], np.int32)}
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(tensors.build_request("subgraphs", zero), timeout=BOUND_S)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
        assert "division by zero" in str(info.value.details()) and node in str(info.value.details())
        good = {"x": np.asarray([100, -50, 7], np.int32), "y": np.asarray([3, 4, -2], np.int32)}
        answer = tensors.decode_response(
            stub.ModelInfer(tensors.build_request("subgraphs", good), timeout=BOUND_S)
        )
        assert answer["q"].tolist() == [33, -12, -3] and answer["l"].tolist() == [11, -3, 1]
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=BOUND_S).live
    assert server.process is not None and server.process.poll() is None


def test_a_model_with_external_data_refuses_int_min_over_minus_one(server: ServerProcess) -> None:
    """Its weights in a file beside it: loaded unguarded before (with a WARNING), and ended."""
    overflow = {"x": np.asarray([7, MIN32, 1], np.int32), "y": np.asarray([2, -1, 1], np.int32)}
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(tensors.build_request("ext", overflow), timeout=BOUND_S)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
        assert "overflow" in str(info.value.details()) and "Div_ext" in str(info.value.details())
        answer = stub.ModelInfer(tensors.build_request("ext", GOOD), timeout=BOUND_S)
        assert tensors.decode_response(answer)["q"].tolist() == [7, -6, -42]  # (x * [2, 3, 3]) / y
    assert server.process is not None and server.process.poll() is None
    assert "left unguarded" not in server.output()
