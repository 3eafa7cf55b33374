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


# --- A third tester (t, on 2d8eeaf): each batched, wrong, OK, also at 098d7b5 ---


def test_a_fixed_length_ahead_of_the_batch_whose_rest_a_minus_one_takes_moves_rows() -> None:
    """[S, N, 6] reshaped to [2, N, -1]: it runs for any S, moving rows unless S is 2 (the -1
    takes 3 * S); [S, N, -1] keeps them."""
    for lead, kept in (("two", False), ("steps", True)):
        nodes = [
            helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2]),
            helper.make_node("Shape", ["x"], ["xs"]),
            helper.make_node("Slice", ["xs", "zero", "one"], ["n1"]),
            helper.make_node("Slice", ["xs", "one", "two"], ["steps"]),
            helper.make_node("Concat", [lead, "n1", "minus"], ["to"], axis=0),
            helper.make_node("Reshape", ["t", "to"], ["r"]),
            helper.make_node("Transpose", ["r"], ["y"], perm=[1, 0, 2]),
        ]
        inits = [_ints("zero", [0]), _ints("one", [1]), _ints("two", [2]), _ints("minus", [-1])]
        x = helper.make_tensor_value_info("x", F, ["N", "S", 6])
        graph = helper.make_graph(nodes, "g", [x], [helper.make_value_info("y", onnx.TypeProto())], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        got = row_mixing_outputs(model)
        assert (got == {}) == kept, (lead, got)
        if not kept:
            assert "the Reshape node making 'r'" in got["y"], got


def test_a_reshape_of_the_batch_with_two_dims_unknown_is_no_proof() -> None:
    """x.view(k, -1).T with k read by an op the load does not follow (a ReduceMax of Shape(x)[1:2],
    6): [N, 6] to [6, N], every row's values spread over the batch."""
    nodes = [
        helper.make_node("Shape", ["x"], ["xs"]),
        helper.make_node("Slice", ["xs", "one", "two"], ["d"]),
        helper.make_node("ReduceMax", ["d"], ["k"], keepdims=1),
        helper.make_node("Concat", ["k", "minus"], ["to"], axis=0),
        helper.make_node("Reshape", ["x", "to"], ["z"]),
        helper.make_node("Transpose", ["z"], ["y"]),
    ]
    got = row_mixing_outputs(
        _model(nodes, [_ints("one", [1]), _ints("two", [2]), _ints("minus", [-1])], (6,))
    )
    assert "the Reshape node making 'z' reshapes 'x'" in got.get("y", ""), got
    assert "its first dim is not the batch's and two of its dims the load cannot work out" in got["y"], got


def test_integer_division_at_load_truncates_and_a_mod_keeps_its_fmod() -> None:
    """A pad on the batch's axis of (d - 7) / 2 + 1 with d = 6: 1 in ONNX (truncated), 0 floored;
    1 - fmod(d - 7, 2): 2, not 0. Read as 0, x padded by a row and cut back to N gave each request
    the row before it."""
    for arithmetic in (
        [helper.make_node("Div", ["less", "two"], ["q"]), helper.make_node("Add", ["q", "one"], ["front"])],
        [
            helper.make_node("Mod", ["less", "two"], ["r"], fmod=1),
            helper.make_node("Sub", ["one", "r"], ["front"]),
        ],
    ):
        nodes = [
            helper.make_node("Shape", ["x"], ["xs"]),
            helper.make_node("Slice", ["xs", "one", "two"], ["d"]),
            helper.make_node("Sub", ["d", "seven"], ["less"]),
            *arithmetic,
            helper.make_node("Concat", ["front", "nought", "nought", "nought"], ["pads"], axis=0),
            helper.make_node("Pad", ["x", "pads"], ["y"]),
        ]
        inits = [_ints(name, [v]) for name, v in (("one", 1), ("two", 2), ("seven", 7), ("nought", 0))]
        got = row_mixing_outputs(_model(nodes, inits, (6,)))
        assert "the Pad node making 'y' may add rows to the batch's axis 0" in got.get("y", ""), got
    values = [np.array([-1, 7, -7]), np.array([2, -2, 2])]
    tracked = PartialInts()
    tracked.known["a"] = np.array([-1, 7, -7], dtype=object)
    for op, attrs, want in (
        ("Div", {}, [0, -3, -3]),
        ("Mod", {}, [1, -1, 1]),
        ("Mod", {"fmod": 1}, [-1, 1, -1]),
    ):
        node = helper.make_node(op, ["a", "b"], ["o"], **attrs)
        tracked.see(node, lambda _: [3], lambda i, v=values: v[1] if i == 1 else None)
        assert tracked.entries("o", None) == tuple(want), (op, attrs)


def test_a_slice_to_the_batchs_size_of_a_fold_is_not_every_row() -> None:
    """x.reshape(-1, 4)[:N] for x [N, 3, 4]: the first N of 3N rows."""
    nodes = [
        helper.make_node("Shape", ["x"], ["xs"]),
        helper.make_node("Slice", ["xs", "zero", "one"], ["n1"]),
        helper.make_node("Reshape", ["x", "rows"], ["f"]),
        helper.make_node("Slice", ["f", "zero", "n1", "zero"], ["y"]),
    ]
    got = row_mixing_outputs(
        _model(nodes, [_ints("zero", [0]), _ints("one", [1]), _ints("rows", [-1, 4])], (3, 4))
    )
    assert "the Slice node making 'y' works along the batch's axis" in got.get("y", ""), got


# --- A fourth tester (u, on 631d835) ---


def _spatial(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto]) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", F, ["N", 4, "H", "W"])
    graph = helper.make_graph(nodes, "g", [x], [helper.make_value_info("y", onnx.TypeProto())], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_group_norm_and_a_pixel_shuffle_with_dynamic_dims_still_batch() -> None:
    """The batch leads the data and the output: other dims the load cannot work out move no row
    (torch's legacy GroupNorm, [0, G, -1] then Shape(x); a pixel shuffle's view(N, C, r, r, H, W);
    refused for a commit of this session)."""
    group_norm = [
        helper.make_node("Reshape", ["x", "groups"], ["g"]),
        helper.make_node("InstanceNormalization", ["g", "scale", "bias"], ["n"]),
        helper.make_node("Shape", ["x"], ["xs"]),
        helper.make_node("Reshape", ["n", "xs"], ["y"]),
    ]
    norm = [numpy_helper.from_array(np.ones(2, np.float32), name) for name in ("scale", "bias")]
    assert row_mixing_outputs(_spatial(group_norm, [_ints("groups", [0, 2, -1]), *norm])) == {}
    shuffle = [
        helper.make_node("Shape", ["x"], ["xs"]),
        helper.make_node("Slice", ["xs", "zero", "one"], ["n"]),
        helper.make_node("Slice", ["xs", "two", "four"], ["hw"]),
        helper.make_node("Concat", ["n", "one", "two", "two", "hw"], ["to"], axis=0),  # (N, 1, 2, 2, H, W)
        helper.make_node("Reshape", ["x", "to"], ["v"]),
        helper.make_node("Transpose", ["v"], ["y"], perm=[0, 1, 4, 2, 5, 3]),
    ]
    inits = [_ints(name, [v]) for name, v in (("zero", 0), ("one", 1), ("two", 2), ("four", 4))]
    assert row_mixing_outputs(_spatial(shuffle, inits)) == {}


def test_a_fixed_length_ahead_of_the_batch_with_a_symbol_or_an_unsolved_minus_one_moves_rows() -> None:
    """[S, N, 6] viewed as (2, N, 3, S) or (2, N, 6, -1) (-1 = S / 2): each runs for many S, moving
    rows unless S is 2 (batched, wrong, OK at 098d7b5 and at 631d835)."""
    for tail in (["three", "steps"], ["six", "minus"]):
        nodes = [
            helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2]),
            helper.make_node("Shape", ["x"], ["xs"]),
            helper.make_node("Slice", ["xs", "zero", "one"], ["n1"]),
            helper.make_node("Slice", ["xs", "one", "two"], ["steps"]),
            helper.make_node("Concat", ["two", "n1", *tail], ["to"], axis=0),
            helper.make_node("Reshape", ["t", "to"], ["y"]),
        ]
        inits = [
            _ints(name, [v]) for name, v in (("zero", 0), ("one", 1), ("two", 2), ("three", 3), ("six", 6))
        ]
        x = helper.make_tensor_value_info("x", F, ["N", "S", 6])
        graph = helper.make_graph(
            nodes, "g", [x], [helper.make_value_info("y", onnx.TypeProto())], [*inits, _ints("minus", [-1])]
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        got = row_mixing_outputs(model)
        assert "the Reshape node making 'y' moves values between the batch's rows" in got.get("y", ""), (
            tail,
            got,
        )


def test_a_view_whose_first_axis_is_a_dim_after_the_batch_moves_rows() -> None:
    """[N, S, 6] viewed as (S, -1), transposed, viewed back as (N, -1): each request got batch
    mates' values, OK (u, also at 098d7b5: the reshape reading's "a size not known" excuse)."""
    nodes = [
        helper.make_node("Shape", ["x"], ["xs"]),
        helper.make_node("Slice", ["xs", "zero", "one"], ["n1"]),
        helper.make_node("Slice", ["xs", "one", "two"], ["steps"]),
        helper.make_node("Concat", ["steps", "minus"], ["to"], axis=0),
        helper.make_node("Reshape", ["x", "to"], ["v"]),
        helper.make_node("Transpose", ["v"], ["t"]),
        helper.make_node("Concat", ["n1", "minus"], ["back"], axis=0),
        helper.make_node("Reshape", ["t", "back"], ["y"]),
    ]
    inits = [_ints(name, [v]) for name, v in (("zero", 0), ("one", 1), ("two", 2), ("minus", -1))]
    x = helper.make_tensor_value_info("x", F, ["N", "S", 6])
    graph = helper.make_graph(nodes, "g", [x], [helper.make_value_info("y", onnx.TypeProto())], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    got = row_mixing_outputs(model)
    assert "the Reshape node making 'v' moves values between the batch's rows" in got.get("y", ""), got
