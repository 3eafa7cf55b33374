"""A second tester's review of the batch's-size reading (session 57). Batched, wrong, OK at
098d7b5 and still at 74ac7d6: the shape of a tensor made from the batch's size (Shape(Range(0, N)));
a Split of a shape by parts computed at run time, read as equal parts; an RNN of N steps whose
first output is left unnamed (a node was read only through its first output). A Split or a Loop
whose first output is left unnamed crashed the server at its first request (onnxruntime 1.31).
The reading made 64 ** 3 entries for a Where of three small tensors (a 3.5 KB model loaded in
20 s). `b, c, h, w = x.shape` as a Split, then x.view(b, c, h * w), was refused."""

from __future__ import annotations

import tracemalloc

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from server.backends.onnx_partial_ints import PartialInts
from server.backends.onnx_row_mixing import row_mixing_outputs
from server.backends.ort_known_crashes import unnamed_required_output

F = TensorProto.FLOAT
AS_VALUE = "the Mul node making 'y' takes the batch's size as a value: it meets 'x'"


def _ints(name: str, values: list[int] | int) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


def _model(
    nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], dims: tuple[int, ...] = (4,), opset: int = 17
) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", F, ["N", *dims])
    y = helper.make_value_info("y", onnx.TypeProto())
    graph = helper.make_graph(nodes, "g", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


SIZE = [helper.make_node("Shape", ["x"], ["shape"]), helper.make_node("Gather", ["shape", "zero"], ["n"])]


def test_the_shape_of_a_tensor_made_from_the_batchs_size_is_made_from_it() -> None:
    for op in ("Shape", "Size"):
        nodes = [
            *SIZE,
            helper.make_node("Range", ["zero", "n", "one"], ["rows"]),  # onnx names its length no dim
            helper.make_node(op, ["rows"], ["count"]),
            helper.make_node("Cast", ["count"], ["f"], to=F),
            helper.make_node("Mul", ["x", "f"], ["y"]),
        ]
        got = row_mixing_outputs(_model(nodes, [_ints("zero", 0), _ints("one", 1)]))
        assert AS_VALUE in got.get("y", ""), (op, got)


def test_a_split_of_a_shape_by_computed_parts_is_not_read_as_equal_parts() -> None:
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Shape", ["two_long"], ["parts"]),  # [0, 2] at run time: N lands second
        helper.make_node("Split", ["shape", "parts"], ["a", "b"]),
        helper.make_node("Cast", ["b"], ["f"], to=F),
        helper.make_node("ReduceMax", ["f"], ["g"], keepdims=0),
        helper.make_node("Mul", ["x", "g"], ["y"]),
    ]
    two_long = numpy_helper.from_array(np.zeros((0, 2), np.float32), "two_long")
    got = row_mixing_outputs(_model(nodes, [two_long], (4,)))
    assert AS_VALUE in got.get("y", ""), got


def test_a_node_read_through_its_named_outputs_when_its_first_is_left_unnamed() -> None:
    """An RNN of 8 constant steps, its sequence_lens the batch's size, Y left unnamed: Y_h is the
    state after N steps."""
    steps = numpy_helper.from_array(np.arange(8, dtype=np.float32).reshape(8, 1, 1) / 8, "steps")
    weights = [numpy_helper.from_array(np.full((1, 1, 1), 0.5, np.float32), name) for name in ("w", "r")]
    nodes = [
        *SIZE,
        helper.make_node("Cast", ["n"], ["lens"], to=TensorProto.INT32),
        helper.make_node("RNN", ["steps", "w", "r", "", "lens"], ["", "state"], hidden_size=1),
        helper.make_node("Reshape", ["state", "one"], ["k"]),
        helper.make_node("Mul", ["x", "k"], ["y"]),
    ]
    got = row_mixing_outputs(_model(nodes, [_ints("zero", [0]), _ints("one", [1]), steps, *weights]))
    assert AS_VALUE in got.get("y", ""), got


def test_an_output_onnx_requires_left_unnamed_is_refused_and_an_optional_one_is_not() -> None:
    split = helper.make_node("Split", ["x", "halves"], ["", "b"], axis=1)
    why = unnamed_required_output(
        _model([split, helper.make_node("Relu", ["b"], ["y"])], [_ints("halves", [2, 2])])
    )
    assert why is not None and why.startswith("the Split node's output 0 ('outputs') is left unnamed"), why
    weights = [numpy_helper.from_array(np.ones((1, 1, 4), np.float32), name) for name in ("w", "r")]
    state = helper.make_node("RNN", ["x3", "w", "r"], ["", "y"], hidden_size=1)
    three = helper.make_node("Unsqueeze", ["x", "zero"], ["x3"])
    assert unnamed_required_output(_model([three, state], [_ints("zero", [0]), *weights])) is None


def test_a_where_of_three_small_tensors_is_counted_before_it_is_made() -> None:
    nodes = [helper.make_node("Where", ["c", "a", "b"], ["o"])]
    tracked = PartialInts()
    tracked.known["c"] = np.ones((64, 1, 1), dtype=object)
    tracked.known["a"] = np.ones((1, 64, 1), dtype=object)
    tracked.known["b"] = np.ones((1, 1, 64), dtype=object)
    tracemalloc.start()
    try:
        for node in nodes:
            tracked.see(node, lambda _: None, lambda _: None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert tracked.entries("o", None) is None
    assert peak < 1 << 20, peak  # 64 ** 3 entries would be 2 MB of references alone


def test_a_shape_split_into_its_dims_views_the_batch_as_its_own() -> None:
    """b, c, h, w = x.shape (a Split: opset 18's num_outputs, or parts); x.view(b, c, h * w)."""
    for opset, split in (
        (18, helper.make_node("Split", ["shape"], ["b", "c", "h", "w"], axis=0, num_outputs=4)),
        (13, helper.make_node("Split", ["shape", "ones"], ["b", "c", "h", "w"], axis=0)),
    ):
        nodes = [
            helper.make_node("Shape", ["x"], ["shape"]),
            split,
            helper.make_node("Mul", ["h", "w"], ["hw"]),
            helper.make_node("Concat", ["b", "c", "hw"], ["to"], axis=0),
            helper.make_node("Reshape", ["x", "to"], ["v"]),
            helper.make_node("Softmax", ["v"], ["y"], axis=-1),
        ]
        model = _model(nodes, [_ints("ones", [1, 1, 1, 1])], (3, 4, 5), opset=opset)
        assert row_mixing_outputs(model) == {}, opset
        swapped = [*nodes[:3], helper.make_node("Concat", ["c", "b", "hw"], ["to"], axis=0), *nodes[4:]]
        got = row_mixing_outputs(_model(swapped, [_ints("ones", [1, 1, 1, 1])], (3, 4, 5), opset=opset))
        assert "the Reshape node making 'v' moves values between the batch's rows" in got.get("y", ""), got
