"""ONNX models made for tests (onnx.helper only: no protos import, see server_process.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# A model whose every batch keeps its only instance busy a while, with room for 2 waiting requests.
SLOW_QUEUE_OF_TWO = """
name: "slow_q2"
platform: "onnxruntime_onnx"
max_batch_size: 4
dynamic_batching {
  default_queue_policy { max_queue_size: 2 }
}
instance_group [ { count: 1 kind: KIND_CPU } ]
"""


def slow_model(path: Path, matmuls: int = 12, size: int = 768) -> Path:
    """x FP32 [N,1] -> y FP32 [N,1]: y = x + tiny * sum(W^k), a fixed cost per batch, whatever N.

    A chain of `matmuls` [size,size] products scaled by x's second dim read from its shape (1, but
    declared 'K', so onnxruntime cannot fold it away): a model whose every batch keeps its
    instance busy for a while. Scaled by the sum of the batch's values, or by its element count,
    the load read the rows as mixed (they were, by 1e-9: the answer depended on the batch) and
    refused to batch it (server/backends/onnx_row_mixing.py).
    """
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((size, size)) / np.sqrt(size)).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(np.float32(1e-9), "tiny")]
    inits.append(numpy_helper.from_array(np.int64(1), "second"))
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "second"], ["count"], axis=0),
        helper.make_node("Cast", ["count"], ["s"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["W", "s"], ["m0"]),
    ]
    for i in range(matmuls):
        nodes.append(helper.make_node("MatMul", [f"m{i}", "W"], [f"m{i + 1}"]))
    nodes += [
        helper.make_node("ReduceSum", [f"m{matmuls}"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "tiny"], ["scaled"]),
        helper.make_node("Add", ["x", "scaled"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "K"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "K"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def filler_model(path: Path) -> Path:
    """SHAPE INT64 [2] -> Y FP32 [a, b] of 1.5s: a tiny request whose answer is as large as asked."""
    value = helper.make_tensor("value", TensorProto.FLOAT, [1], [1.5])
    graph = helper.make_graph(
        [helper.make_node("ConstantOfShape", ["SHAPE"], ["Y"], value=value)],
        "filler",
        [helper.make_tensor_value_info("SHAPE", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["a", "b"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def constant_model(path: Path) -> Path:
    """No inputs -> Y FP32 [2] = [1, 2]: a model a client calls with nothing to send."""
    value = numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "value")
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["Y"], value=value)],
        "constant",
        [],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def scale_model(path: Path, k: float) -> Path:
    """x FP32 [N,4] -> y FP32 [N,4] = k * x: an answer says which version (k) computed it."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["y"])],
        "scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(np.float32(k), "k")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path
