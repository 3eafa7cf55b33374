"""Small ONNX graphs written by hand for the tests of the load's readings (row mixing, reshapes,
the batch's size): one float input 'x' (or the inputs given), one output, opset 17 unless said."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
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


# A Loop of one turn: its trip count `once` and condition `go`, initializers ONCE gives.
ONCE = [numpy_helper.from_array(np.array(1, np.int64), "once"), numpy_helper.from_array(np.array(True), "go")]


def once_round(step: onnx.NodeProto | None = None) -> onnx.GraphProto:
    """A Loop's body: its condition passed on, its carried value `c_in` made `c_out` by `step`
    (passed through unchanged where none is given)."""
    return helper.make_graph(
        [
            helper.make_node("Identity", ["go"], ["go_out"]),
            step or helper.make_node("Identity", ["c_in"], ["c_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("turn", TensorProto.INT64, []),
            helper.make_tensor_value_info("go", TensorProto.BOOL, []),
            helper.make_tensor_value_info("c_in", F, None),
        ],
        [
            helper.make_tensor_value_info("go_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("c_out", F, None),
        ],
    )


def carried_once(source: str, out: str = "lo") -> onnx.NodeProto:
    """`out` = a Loop of one turn (ONCE's initializers) carrying `source` through unchanged."""
    return helper.make_node("Loop", ["once", "go", source], [out], body=once_round())


def rows_independent(
    model: onnx.ModelProto,
    row: Sequence[int] = (3,),
    rows: int = 4,
    feeds: dict[str, np.ndarray] | None = None,
) -> bool:
    """onnxruntime's answer for `rows` random rows of `row` batched equals each row's alone, shape
    and values: what the load's reading claims of a model it batches. `feeds`: other inputs, sent
    with each run as they are."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((rows, *row)).astype(np.float32)
    (batched,) = session.run(None, {"x": x, **(feeds or {})})
    alone = [session.run(None, {"x": x[i : i + 1], **(feeds or {})})[0] for i in range(rows)]
    return all(
        a.shape == batched[i : i + 1].shape and np.allclose(a, batched[i : i + 1])
        for i, a in enumerate(alone)
    )


def flagged_rows_independent(model: onnx.ModelProto, row: Sequence[int] = (3,)) -> bool:
    """rows_independent with an If's condition a second input 'c', for both of its values."""
    return all(rows_independent(model, row, feeds={"c": np.array(flag)}) for flag in (True, False))
