"""A Reshape proves its dims only where onnxruntime runs it and checks its shape (onnx_dim_terms.
checked_reshapes; a tester, session 67): one no graph output needs is dropped at load, and one read
only by Reshapes is fused with them at the default optimization level, its shape never checked. And
a Pad's pads are read as each axis's only without an `axes` input (opset 18)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from server.backends.onnx_dim_terms import checked_reshapes
from server.backends.onnx_row_mixing import row_mixing_outputs
from tests.support.onnx_graphs import F, graph_model, ints, node

SIZES = [ints("zero1", [0]), ints("one1", [1]), ints("two1", [2]), ints("ones", [1])]


def _sizes(source: str, out: str, axis: str) -> onnx.NodeProto:
    return node("Gather", [source, axis], out, axis=0)


def _dead_join(used: bool) -> onnx.ModelProto:
    """Reshape(ConstantOfShape([H, 1]), [W, 1]) (fails unless H == W), and x [N, H, K] viewed as
    [-1, W, K]: its -1 is N only where H == W. `used`: the first Reshape's values a second output."""
    nodes = [
        node("Shape", ["x"], "sx"),
        node("Shape", ["z"], "sz"),
        _sizes("sx", "h", "one1"),
        _sizes("sz", "w", "one1"),
        _sizes("sx", "k", "two1"),
        node("Concat", ["h", "ones"], "hs", axis=0),
        node("ConstantOfShape", ["hs"], "t"),
        node("Concat", ["w", "ones"], "ws", axis=0),
        node("Reshape", ["t", "ws"], "r"),
        node("Concat", ["minus1", "w", "k"], "to", axis=0),
        node("Reshape", ["x", "to"], "v"),
        node("Relu", ["v"], "y"),
    ]
    inputs = [
        helper.make_tensor_value_info("x", F, ["N", "H", "K"]),
        helper.make_tensor_value_info("z", F, ["N", "W"]),
    ]
    model = graph_model(nodes, [*SIZES, ints("minus1", [-1])], inputs=inputs)
    if used:
        model.graph.output.append(helper.make_tensor_value_info("r", F, None))
    return model


def test_a_reshape_no_output_needs_proves_nothing() -> None:
    """Batched at 3897be1 (H and W named alike by the unused Reshape); onnxruntime drops it, and a
    batch of 2 at H = 2, W = 4 gives each request's view another shape than alone."""
    dead = _dead_join(used=False)
    session = ort.InferenceSession(dead.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {"x": np.ones((2, 2, 3), np.float32), "z": np.ones((2, 4), np.float32)}
    assert session.run(["y"], feeds)[0].shape == (1, 4, 3)  # two requests' rows in one
    assert "reshapes 'x'" in row_mixing_outputs(dead)["y"]
    assert checked_reshapes(dead.graph) == {"v"}
    assert checked_reshapes(_dead_join(used=True).graph) == {"r", "v"}  # an output: checked


def _fused(readers: list[onnx.NodeProto]) -> onnx.GraphProto:
    nodes = [node("Reshape", ["x", "s"], "a"), *readers]
    out = [helper.make_tensor_value_info("y", F, None)]
    return helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", F, ["N", 4])], out, [ints("s", [2, 2])]
    )


def test_a_reshape_read_only_by_reshapes_is_fused_and_not_checked() -> None:
    assert checked_reshapes(_fused([node("Reshape", ["a", "s"], "y")])) == {"y"}
    assert checked_reshapes(_fused([node("Relu", ["a"], "y")])) == {"a"}
    assert checked_reshapes(_fused([node("Identity", ["a"], "i"), node("Reshape", ["i", "s"], "y")])) == {"y"}
    both = [node("Reshape", ["a", "s"], "b"), node("Relu", ["a"], "c"), node("Add", ["b", "c"], "y")]
    assert checked_reshapes(_fused(both)) == {"a", "b"}
    sized = [node("Shape", ["a"], "c"), node("Cast", ["c"], "f", to=F), node("Add", ["x", "f"], "y")]
    assert checked_reshapes(_fused(sized)) == set()  # a Shape of a constant shape is folded
    unused = [node("Relu", ["a"], "c"), node("Relu", ["x"], "y")]
    assert checked_reshapes(_fused(unused)) == set()
    # onnxruntime itself: an invalid [2, 4] -> [2, 3] read only by a Reshape back to [2, 4] runs.
    graph = helper.make_graph(
        [node("Reshape", ["x", "bad"], "a"), node("Reshape", ["a", "good"], "y")],
        "g",
        [helper.make_tensor_value_info("x", F, [2, 4])],
        [helper.make_tensor_value_info("y", F, None)],
        [ints("bad", [2, 3]), ints("good", [2, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session.run(None, {"x": np.ones((2, 4), np.float32)})[0].shape == (2, 4)


def _pad_then_view(axes: list[int]) -> onnx.ModelProto:
    """x [N, W] padded by W at the end of axis 1 (pads listed in `axes`' order), viewed as [-1, W]:
    [2N, W], each request's rows two."""
    pads = ["zero1", "zero1", "w", "zero1"] if axes == [1, 0] else ["zero1", "zero1", "zero1", "w"]
    nodes = [
        node("Shape", ["x"], "s"),
        _sizes("s", "w", "one1"),
        node("Concat", pads, "pads", axis=0),
        node("Pad", ["x", "pads", "fill", "axes"], "p"),
        node("Concat", ["minus1", "w"], "to", axis=0),
        node("Reshape", ["p", "to"], "y"),
    ]
    inits = [*SIZES, ints("minus1", [-1]), ints("axes", axes), numpy_helper.from_array(np.float32(0), "fill")]
    return graph_model(nodes, inits, shape=("N", "W"), opset=18)


def test_a_pad_with_axes_is_not_read_as_keeping_an_axis() -> None:
    """Batched at fbe1b04 (axis 1 read as padded by 0, its length W): refused, as at 3897be1."""
    for axes in ([1, 0], [0, 1]):
        model = _pad_then_view(axes)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        assert session.run(None, {"x": np.ones((2, 4), np.float32)})[0].shape == (4, 4)
        assert "y" in row_mixing_outputs(model), axes


def test_a_reshape_of_no_batchs_data_proves_no_relation_for_the_batchs_views() -> None:
    """Reshape(ConstantOfShape([H, W]), [A, 4]) read as H * W = 4 * A, then x [N, H, W] viewed as
    [-1, A, 4], its -1 solved as N through it: batched at fbe1b04. onnxruntime does not check that
    Reshape when its values only feed a ReduceSum (default optimizations): at H, W, A = 2, 4, 1 a
    batch of 2 is answered [4, 1, 4]. Only a Reshape of the batch's data proves products equal."""
    nodes = [
        node("Shape", ["x"], "sx"),
        node("Shape", ["a"], "sa"),
        _sizes("sx", "h", "one1"),
        _sizes("sx", "w", "two1"),
        _sizes("sa", "k", "one1"),
        node("Concat", ["h", "w"], "hw", axis=0),
        node("ConstantOfShape", ["hw"], "t"),
        node("Concat", ["k", "four1"], "k4", axis=0),
        node("Reshape", ["t", "k4"], "r"),
        node("ReduceSum", ["r"], "total", keepdims=0),
        node("Concat", ["minus1", "k", "four1"], "to", axis=0),
        node("Reshape", ["x", "to"], "v"),
        node("Add", ["v", "total"], "y"),
    ]
    inputs = [
        helper.make_tensor_value_info("x", F, ["N", "H", "W"]),
        helper.make_tensor_value_info("a", F, ["N", "A"]),
    ]
    model = graph_model(nodes, [*SIZES, ints("minus1", [-1]), ints("four1", [4])], inputs=inputs)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {"x": np.ones((2, 2, 4), np.float32), "a": np.ones((2, 1), np.float32)}
    assert session.run(None, feeds)[0].shape == (4, 1, 4)  # two requests' rows as four
    assert "reshapes 'x'" in row_mixing_outputs(model)["y"]
