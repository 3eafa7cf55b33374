"""Small ONNX graphs written by hand for the tests of the load's readings (row mixing, reshapes,
the batch's size): one float input 'x' (or the inputs given), one output, opset 17 unless said."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F = TensorProto.FLOAT


def graph_model(
    nodes: Sequence[onnx.NodeProto],
    inits: Sequence[onnx.TensorProto] = (),
    *,
    inputs: Sequence[onnx.ValueInfoProto] = (),
    shape: Sequence[int | str | None] = (None, 3),
    opset: int = 17,
    output: str = "y",
) -> onnx.ModelProto:
    """A model of `nodes`: its input 'x' FLOAT of `shape` unless `inputs` are given, its output
    `output` of no declared shape (onnx's inference gives it)."""
    given = list(inputs) or [helper.make_tensor_value_info("x", F, list(shape))]
    out = [helper.make_tensor_value_info(output, F, None)]
    graph = helper.make_graph(list(nodes), "g", given, out, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def ints(name: str, values: Sequence[int] | Sequence[Sequence[int]] | int) -> onnx.TensorProto:
    """An INT64 initializer."""
    return numpy_helper.from_array(np.asarray(values, np.int64), name)


def node(op: str, inputs: Sequence[str], output: str, **attrs: object) -> onnx.NodeProto:
    """A node of one output."""
    return helper.make_node(op, list(inputs), [output], **attrs)


def leading_sizes(source: str = "x", axes: str | None = "axis0") -> list[onnx.NodeProto]:
    """'n', 't': `source`'s first two sizes read from its shape 's' (initializers 'zero' and 'one'),
    'n1' and 't1' the same as one value: unsqueezed by the initializer `axes` ([0]), or by the
    attribute where `axes` is None (before opset 13)."""
    by: dict[str, object] = {"axes": [0]} if axes is None else {}
    extra = [] if axes is None else [axes]
    return [
        node("Shape", [source], "s"),
        node("Gather", ["s", "zero"], "n", axis=0),
        node("Gather", ["s", "one"], "t", axis=0),
        node("Unsqueeze", ["n", *extra], "n1", **by),
        node("Unsqueeze", ["t", *extra], "t1", **by),
    ]


def own_view(
    out: str, tail: Sequence[str], source: str = "x", axes: str | None = "axis0"
) -> list[onnx.NodeProto]:
    """`source` [N, T, ...] viewed as `out` [N, T, *tail] by its own sizes, torch's legacy export of
    x.view(x.size(0), x.size(1), ...): at opset 13 and before, onnx's inference gave it no shape."""
    return [
        *leading_sizes(source, axes),
        node("Concat", ["n1", "t1", *tail], "view", axis=0),
        node("Reshape", [source, "view"], out),
    ]
