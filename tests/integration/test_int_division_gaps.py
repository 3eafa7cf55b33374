"""Models the integer division guard (server/backends/int_division_guard.py) had loaded unguarded
with a WARNING, over a real server: an opset-8 Div (no Where), a Div spelt in domain "ai.onnx", a
Div in a SequenceMap body, a Div by a Constant kept in external data, and (without a WARNING: the
function was not looked into) a Div in an If inside a model-local function (session 58). A client's
zero divisor or INT_MIN / -1 there ended the process (SIGFPE: 1.23 on both, 1.31 on MIN / -1); now each is
refused INVALID_ARGUMENT naming the node, the good requests around it answered, the server lives."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from onnx import TensorProto

from clients import tensors
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.division_models import (
    DIV_CONFIG,
    ai_onnx_div,
    external_constant_div,
    function_if_div,
    opset_div,
    sequence_map_div,
)
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess

BOUND_S = 60.0  # generous: a bound on a test that fails, never a measure
MIN32 = np.iinfo(np.int32).min
MIN64 = np.iinfo(np.int64).min
FUNCTION_CONFIG = DIV_CONFIG.replace("TYPE_INT32", "TYPE_INT64")
SEQUENCE_CONFIG = """
max_batch_size: 0
input [ { name: "x" data_type: TYPE_INT32 dims: [ 2, 3 ] }, { name: "y" data_type: TYPE_INT32 dims: [ 3 ] } ]
output [ { name: "q" data_type: TYPE_INT32 dims: [ 2, 3 ] } ]
"""
CONSTANT_CONFIG = """
max_batch_size: 0
input [ { name: "x" data_type: TYPE_INT32 dims: [ 3 ] } ]
output [ { name: "q" data_type: TYPE_INT32 dims: [ 3 ] } ]
"""


def _int32(*values: object) -> np.ndarray:
    return np.asarray(values, np.int32)


@dataclass(frozen=True)
class Case:
    model: str
    node: str  # as the message names it
    good: dict[str, np.ndarray]
    answer: list[object]
    zero: dict[str, np.ndarray] | None  # None: the model's divisor is fixed and holds no zero
    overflow: dict[str, np.ndarray]


CASES = [
    Case(
        "opset8",
        "Div_old",
        {"x": _int32(7, -9, 100), "y": _int32(2, 4, -7)},
        [3, -2, -14],
        {"x": _int32(7, -9, 100), "y": _int32(2, 0, -7)},
        {"x": _int32(7, MIN32, 100), "y": _int32(2, -1, -7)},
    ),
    Case(
        "ai_onnx",
        "Div_ai",
        {"x": _int32(7, -9, 100), "y": _int32(2, 4, -7)},
        [3, -2, -14],
        {"x": _int32(7, -9, 100), "y": _int32(0, 4, -7)},
        {"x": _int32(MIN32, -9, 100), "y": _int32(-1, 4, -7)},
    ),
    Case(
        "sequence_map",
        "Div_row (in Map_rows)",
        {"x": _int32([7, -9, 100], [1, 2, 3]), "y": _int32(2, 4, -7)},
        [[3, -2, -14], [0, 0, 0]],  # truncated, as onnxruntime divides
        {"x": _int32([7, -9, 100], [1, 2, 3]), "y": _int32(2, 4, 0)},
        {"x": _int32([7, -9, 100], [1, MIN32, 3]), "y": _int32(2, -1, -7)},
    ),
    Case(  # a Div in an If inside a model-local function (a tester, session 58: the server died)
        "function_if",
        "Div_fn__1 (in If_fn__1)",  # as onnx's inliner names the call's copy
        {"x": np.int64([7, -9, 100]), "y": np.int64([2, 4, -7])},
        [3, -2, -14],
        {"x": np.int64([7, -9, 100]), "y": np.int64([2, 0, -7])},
        {"x": np.int64([7, MIN64, 100]), "y": np.int64([2, -1, -7])},
    ),
    Case(
        "external_constant",
        "Div_ext_const",
        {"x": _int32(7, 8, 9)},
        [3, -8, 2],  # x / [2, -1, 4]
        None,
        {"x": _int32(7, MIN32, 9)},
    ),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("gaps")
    repo, files = base / "repo", base / "files"
    write_model(repo, "opset8", opset_div(files / "opset8.onnx", 8, TensorProto.INT32), DIV_CONFIG)
    write_model(repo, "ai_onnx", ai_onnx_div(files / "ai_onnx.onnx"), DIV_CONFIG)
    write_model(repo, "sequence_map", sequence_map_div(files / "sequence_map.onnx"), SEQUENCE_CONFIG)
    write_model(repo, "function_if", function_if_div(files / "function_if.onnx"), FUNCTION_CONFIG)
    external_constant_div(repo / "external_constant" / "1" / "model.onnx")  # c.bin beside it
    (repo / "external_constant" / "config.pbtxt").write_text(CONSTANT_CONFIG)
    with ServerProcess("--model-repository", str(repo)) as running:
        yield running


@pytest.mark.parametrize("case", CASES, ids=[case.model for case in CASES])
def test_a_trapping_divisor_is_refused_naming_the_node_and_the_server_lives(
    server: ServerProcess, case: Case
) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def good() -> None:
            answer = stub.ModelInfer(tensors.build_request(case.model, case.good), timeout=BOUND_S)
            assert tensors.decode_response(answer)["q"].tolist() == case.answer

        good()
        bad = [("division by zero", case.zero)] if case.zero is not None else []
        for fault, feed in [*bad, ("overflow", case.overflow)]:
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(tensors.build_request(case.model, feed), timeout=BOUND_S)
            details = str(info.value.details())
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, details
            assert fault in details and f"node '{case.node}'" in details, details
            good()
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=BOUND_S).live
    assert server.process is not None and server.process.poll() is None
    assert f"model {case.model}: integer Div/Mod left unguarded" not in server.output()
