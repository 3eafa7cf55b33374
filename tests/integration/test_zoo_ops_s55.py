"""Ops a tester of session 55 found loaded batched with rows mixed, over a real server: each is
refused a batched load naming the op, and a model completed from its graph alone runs each request
alone; a MaxUnpool of its own MaxPool's indices still batches, each request answered as alone
(server/backends/onnx_mixing_ops.py, onnx_pool_indices.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import tritonclient.grpc as tg
from onnx import TensorProto, helper, numpy_helper

from tests.integration.test_zoo_batch_dims import _index
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess
from tests.support.zoo_checks import BATCH_OF_FOUR_ROWS, assert_each_alone, ours_together, triton_together

F, I64, U8 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.UINT8


def _save(
    path: Path,
    nodes: list[onnx.NodeProto],
    inputs: dict[str, list[Any]],
    outputs: dict[str, int],
    opset: int,
    inits: list[onnx.TensorProto] | None = None,
    kind: int = F,
) -> Path:
    graph = helper.make_graph(
        nodes,
        path.stem,
        [helper.make_tensor_value_info(name, kind, dims) for name, dims in inputs.items()],
        [helper.make_tensor_value_info(name, out, None) for name, out in outputs.items()],
        initializer=inits or [],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10 if opset >= 21 else 8
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, dict[str, Path]]]:
    repo, files = tmp_path_factory.mktemp("zoo-ops"), tmp_path_factory.mktemp("zoo-ops-files")
    w = numpy_helper.from_array(np.ones(4, np.float32), "w")
    rms = _save(files / "rms.onnx", [helper.make_node("RMSNormalization", ["x", "w"], ["y"], axis=0)],
                {"x": ["N", 4]}, {"y": F}, 23, [w])  # fmt: skip
    pool = helper.make_node("MaxPool", ["x"], ["p", "i"], kernel_shape=[2, 2], strides=[2, 2])
    indices = _save(files / "indices.onnx", [pool], {"x": ["N", 1, 4, 4]}, {"p": F, "i": I64}, 17)
    unpool = [pool, helper.make_node("MaxUnpool", ["p", "i"], ["y"], kernel_shape=[2, 2], strides=[2, 2])]
    unpooled = _save(files / "unpool.onnx", unpool, {"x": ["N", 1, 4, 4]}, {"y": F}, 17)
    bitwise = _save(files / "bitwise.onnx", [helper.make_node("BitwiseAnd", ["x", "m"], ["y"])],
                    {"x": ["N", 4, 3], "m": ["N", 3]}, {"y": U8}, 18, kind=U8)  # fmt: skip
    write_model(repo, "rms_batched", rms, BATCH_OF_FOUR_ROWS)
    write_model(repo, "rms", rms, None)
    write_model(repo, "indices_batched", indices, BATCH_OF_FOUR_ROWS)
    write_model(repo, "unpool_batched", unpooled, BATCH_OF_FOUR_ROWS)
    write_model(repo, "bitwise_batched", bitwise, BATCH_OF_FOUR_ROWS)
    with ServerProcess("--model-repository", str(repo)) as server:
        yield server, {"rms": rms, "unpool": unpooled}


@pytest.mark.parametrize(
    ("model", "says"),
    [
        ("rms_batched", "the RMSNormalization node making 'y' works along the batch's axis"),
        ("indices_batched", "returns in 'i' positions counted over the whole batch"),
        ("bitwise_batched", "the BitwiseAnd node making 'y' pairs each row of the batch with every other"),
    ],
)
def test_a_batched_load_of_an_op_that_mixes_rows_fails_naming_it(
    zoo: tuple[ServerProcess, dict[str, Path]], model: str, says: str
) -> None:
    index = _index(zoo[0])
    assert index[model].state == "UNAVAILABLE", index[model]
    assert says in index[model].reason and "mixes the rows of a batch" in index[model].reason


def test_completed_from_its_graph_each_request_runs_alone(zoo: tuple[ServerProcess, dict[str, Path]]) -> None:
    server, files = zoo
    client = tg.InferenceServerClient(server.address)
    try:
        assert client.get_model_config("rms").config.max_batch_size == 0
    finally:
        client.close()
    rng = np.random.default_rng(55)
    requests = [{"x": rng.normal(size=(1, 4)).astype(np.float32)} for _ in range(4)]
    assert_each_alone(files["rms"], requests, ours_together(server.address, "rms", requests), "rms")


@pytest.mark.parametrize("send", ["tritonclient", "ours"])
def test_a_maxunpool_of_its_own_indices_batches_each_request_as_alone(
    zoo: tuple[ServerProcess, dict[str, Path]], send: str
) -> None:
    server, files = zoo
    rng = np.random.default_rng(7)
    requests = [{"x": rng.normal(size=(1, 1, 4, 4)).astype(np.float32)} for _ in range(4)]
    if send == "tritonclient":
        answers = triton_together(server.address, "unpool_batched", requests, ["y"])
    else:
        answers = ours_together(server.address, "unpool_batched", requests)
    assert_each_alone(files["unpool"], requests, answers, "unpool_batched")
    client = tg.InferenceServerClient(server.address)
    try:
        stats = client.get_inference_statistics("unpool_batched").model_stats[0]
    finally:
        client.close()
    assert stats.execution_count < stats.inference_count  # batched together, not one at a time
