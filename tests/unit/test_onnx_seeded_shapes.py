"""Shapes onnx's inference leaves unknown, worked out node by node (server/backends/onnx_seeded_shapes.py):
a Split by lengths computed from the shape, the ops after it through onnx's inference of each node
(with a Constant node's value for a Reshape's shape), an initializer's dims and type, graph outputs
and nodes with bodies left alone."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from server.backends.onnx_mixing_graph import value_dims
from server.backends.onnx_output_shapes import inferred_shapes
from server.backends.onnx_seeded_shapes import seed_unshaped

F, I64 = TensorProto.FLOAT, TensorProto.INT64
N = helper.make_node


def _ints(name: str, values: list[int] | int) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


HALVES = [  # lengths Shape(src)[1] / 2 twice, through a Cast to float and back: onnx cannot fold them
    N("Shape", ["src"], ["s"]),
    N("Gather", ["s", "one"], ["w"]),
    N("Cast", ["w"], ["wf"], to=F),
    N("Div", ["wf", "twof"], ["hf"]),
    N("Cast", ["hf"], ["h"], to=I64),
    N("Unsqueeze", ["h", "zero1"], ["h1"]),
    N("Concat", ["h1", "h1"], ["lens"], axis=0),
    N("Split", ["src", "lens"], ["a", "b"], axis=1),
]
INITS = [_ints("one", 1), numpy_helper.from_array(np.float32(2), "twof"), _ints("zero1", [0])]


def _inferred(
    nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], src: bool = True
) -> onnx.ModelProto:
    inputs = [helper.make_tensor_value_info("src", F, ["N", 4])] if src else []
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", F, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return inferred_shapes(model)


def _dims(model: onnx.ModelProto, name: str) -> list[int | str | None] | None:
    found = [v for v in model.graph.value_info if v.name == name]
    return value_dims(found[-1]) if found else None


def _elem(model: onnx.ModelProto, name: str) -> int:
    return next(v.type.tensor_type.elem_type for v in model.graph.value_info if v.name == name)


def test_a_split_by_computed_lengths_and_the_ops_after_it_are_given_shapes() -> None:
    shape = N("Constant", [], ["shp"], value=numpy_helper.from_array(np.array([1, 1], np.int64)))
    nodes = [
        *HALVES,
        N("Softmax", ["a"], ["sm"], axis=1),
        shape,
        N("Expand", ["sm", "shp"], ["r"]),
        N("Relu", ["r"], ["y"]),
    ]
    model = _inferred(nodes, INITS)
    assert _dims(model, "a") is None  # onnx's own inference: no shape
    assert seed_unshaped(model)
    assert _dims(model, "a") == _dims(model, "b") == ["N", None]
    assert _elem(model, "a") == F
    assert _dims(model, "sm") == ["N", None]  # onnx's inference of the Softmax alone
    assert _dims(model, "r") == ["N", None]  # the Expand read with the Constant node's [1, 1]
    assert _dims(model, "y") is None  # a graph output: not seeded
    assert not seed_unshaped(model)  # nothing left


def test_an_initializers_dims_and_type_are_read() -> None:
    nodes = [*HALVES, N("Identity", ["a"], ["y"])]
    table = numpy_helper.from_array(np.arange(8, dtype=np.int64).reshape(2, 4), "src")
    model = _inferred(nodes, [*INITS, table], src=False)
    assert seed_unshaped(model)
    assert _dims(model, "a") == [2, None] and _elem(model, "a") == I64


def test_a_node_with_a_body_is_left_alone() -> None:
    branch = helper.make_graph(
        [N("Identity", ["a"], ["t"])], "b", [], [helper.make_tensor_value_info("t", F, None)]
    )
    cond = numpy_helper.from_array(np.array(True), "yes")
    nodes = [
        *HALVES,
        N("If", ["yes"], ["i"], then_branch=branch, else_branch=branch),
        N("Relu", ["i"], ["y"]),
    ]
    model = _inferred(nodes, [*INITS, cond])
    seed_unshaped(model)
    assert _dims(model, "i") is None
