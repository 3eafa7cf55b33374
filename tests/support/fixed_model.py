"""A model whose every shape is fixed, as CUDA graphs need (tests of IO binding's fixed buffers)."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper


def fixed_model(path: Path) -> Path:
    """x f32[2,4] -> twice = 2x, plus = x + 1."""
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["twice"]), helper.make_node("Add", ["x", "one"], ["plus"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [
            helper.make_tensor_value_info("twice", TensorProto.FLOAT, [2, 4]),
            helper.make_tensor_value_info("plus", TensorProto.FLOAT, [2, 4]),
        ],
        initializer=[two, one],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path
