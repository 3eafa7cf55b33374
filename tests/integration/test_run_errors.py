"""A run that onnxruntime refuses or fails, through a real server: the caller gets onnxruntime's
message (as from Triton's onnxruntime backend), INVALID_ARGUMENT when onnxruntime calls it the
inputs' fault, INTERNAL otherwise; the server keeps serving. With tritonclient and our client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.grpc as triton
from onnx import TensorProto, helper

from clients import NO_RETRY, Client, InvalidArgument
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess

TABLE_ROWS = 3


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _lookup(path: Path) -> Path:
    """ids int64[n] -> rows f32[n, 2] of a 3-row table (Gather): an id past the table is refused
    by onnxruntime (its INVALID_ARGUMENT), as an embedding model refuses a token past its vocabulary."""
    table = helper.make_tensor("table", TensorProto.FLOAT, [TABLE_ROWS, 2], [float(i) for i in range(6)])
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["rows"], axis=0)],
        "lookup",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["n", 2])],
        initializer=[table],
    )
    return _save(graph, path)


def _pair(path: Path) -> Path:
    """a f32[r, c1] + b f32[r, c2]: shapes the config allows (-1) but Add cannot broadcast
    fail onnxruntime's run (not its INVALID_ARGUMENT)."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"])],
        "pair",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["r", "c1"]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["r", "c2"]),
        ],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["r", "c"])],
    )
    return _save(graph, path)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    work = tmp_path_factory.mktemp("run_errors")
    repo = work / "repo"
    write_model(repo, "lookup", _lookup(work / "lookup.onnx"), 'name: "lookup"\nmax_batch_size: 0\n')
    write_model(repo, "pair", _pair(work / "pair.onnx"), 'name: "pair"\nmax_batch_size: 0\n')
    with ServerProcess("--model-repository", str(repo)) as running:
        yield running


def _ids(values: list[int]) -> triton.InferInput:
    # A scalar per row is dims [1] on the wire, as Triton completes it: [N, 1].
    ids = triton.InferInput("ids", [len(values), 1], "INT64")
    ids.set_data_from_numpy(np.array(values, np.int64).reshape(-1, 1))
    return ids


def test_onnxruntimes_invalid_argument_is_the_callers_with_its_message(server: ServerProcess) -> None:
    client = triton.InferenceServerClient(server.address)
    with pytest.raises(triton.InferenceServerException) as caught:
        client.infer("lookup", [_ids([0, 10])])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    message = caught.value.message()
    assert "onnxruntime refused the inputs of model 'lookup'" in message
    assert "indices element out of data bounds" in message and "idx=10" in message
    rows = client.infer("lookup", [_ids([2, 0])]).as_numpy("rows")  # still serving
    assert rows.tolist() == [[4.0, 5.0], [0.0, 1.0]]
    with (
        Client(server.address, retry=NO_RETRY) as ours,
        pytest.raises(InvalidArgument, match="indices element out of data bounds"),
    ):
        ours.infer("lookup", {"ids": np.array([[-7]], np.int64)})


def test_a_failed_run_is_internal_with_onnxruntimes_message(server: ServerProcess) -> None:
    client = triton.InferenceServerClient(server.address)
    a = triton.InferInput("a", [3, 5], "FP32")
    a.set_data_from_numpy(np.ones((3, 5), np.float32))
    b = triton.InferInput("b", [3, 6], "FP32")
    b.set_data_from_numpy(np.ones((3, 6), np.float32))
    with pytest.raises(triton.InferenceServerException) as caught:
        client.infer("pair", [a, b])
    assert caught.value.status() == "StatusCode.INTERNAL"
    message = caught.value.message()
    assert "onnxruntime failed the run of model 'pair'" in message and "broadcast" in message
    assert "[ONNXRuntimeError]" not in message  # its code prefix is dropped; the status says it
    b.set_shape([3, 5])
    b.set_data_from_numpy(np.ones((3, 5), np.float32))
    assert client.infer("pair", [a, b]).as_numpy("sum").tolist() == [[2.0] * 5] * 3
