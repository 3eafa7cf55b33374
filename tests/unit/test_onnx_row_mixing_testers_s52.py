"""What two testers of session 52 found in the reading of ops that mix rows after this session's
changes (and before them): each model here was read as per row, and onnxruntime showed a request's
answer batched differ from its answer alone, or an answer OK batched where alone it is refused.
Each test fails on the code before its fix."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from server.backends.onnx_row_mixing import row_mixing_outputs
from tests.support.onnx_graphs import graph_model, ints, node, own_view

F, I64 = TensorProto.FLOAT, TensorProto.INT64
X = [helper.make_tensor_value_info("x", F, ["N", 4])]
LENS = [*X, helper.make_tensor_value_info("lens", I64, ["N"])]
ZEROS = numpy_helper.from_array(np.zeros(1, np.float32))
BASE = [ints("zero", 0), ints("one", 1), ints("ax0", [0]), ints("ax1", [1]), ints("last", [-1])]
BASE += [ints("from0", [0]), ints("to1", [1])]


def _square() -> list[onnx.NodeProto]:
    """'z' = zeros(N, N), N x's rows."""
    return [
        node("Shape", ["x"], "s"),
        node("Gather", ["s", "zero"], "n", axis=0),
        node("Unsqueeze", ["n", "ax0"], "n1"),
        node("Concat", ["n1", "n1"], "nn", axis=0),
        node("ConstantOfShape", ["nn"], "z", value=ZEROS),
    ]


def _model(
    nodes: Sequence[onnx.NodeProto], inputs: Sequence[onnx.ValueInfoProto] = LENS, **kw: object
) -> onnx.ModelProto:
    return graph_model(nodes, [*BASE, *kw.pop("inits", [])], inputs=inputs, **kw)  # type: ignore[arg-type]


def test_an_expand_by_a_where_whose_ones_are_longer_than_the_shape_copies_rows() -> None:
    # where(shape == -1, [1, 1], shape) of a shape of one: [N, N], every row's place in each row.
    nodes = [
        *_square()[:2],
        node("Range", ["zero", "n", "one"], "rows"),
        node("Add", ["rows", "from0"], "both"),
        node("Shape", ["both"], "bshape"),
        node("Equal", ["bshape", "minus2"], "unset"),
        node("Where", ["unset", "ones2", "bshape"], "to"),
        node("Expand", ["rows", "to"], "every"),
        node("Gather", ["x", "every"], "g", axis=0),
        node("ReduceSum", ["g", "ax1"], "y", keepdims=0),
    ]
    model = _model(nodes, X, inits=[ints("minus2", [-1, -1]), ints("ones2", [1, 1])])
    assert "y" in row_mixing_outputs(model)


def _put_into_square() -> list[onnx.NodeProto]:
    """m = zeros(N, N); m[arange(N), lens - 1] = x[:, 0]."""
    return [
        *_square(),
        node("Range", ["zero", "n", "one"], "rows"),
        node("Sub", ["lens", "one"], "idx"),
        node("Unsqueeze", ["rows", "last"], "rc"),
        node("Unsqueeze", ["idx", "last"], "cc"),
        node("Concat", ["rc", "cc"], "at", axis=-1),
        node("Gather", ["x", "zero"], "first", axis=1),
        node("ScatterND", ["z", "at", "first"], "y"),
    ]


def test_an_index_put_into_data_as_wide_as_the_batch_mixes() -> None:
    # A request with lens 4 alone is refused ("invalid indice"); batched with three others it got OK.
    got = row_mixing_outputs(_model(_put_into_square()))
    assert "the ScatterND node making 'y'" in got["y"], got


def test_an_output_carrying_the_batch_on_two_axes_mixes_unless_an_input_declares_it() -> None:
    got = row_mixing_outputs(_model([*_square(), node("Identity", ["z"], "y")], X))
    assert got["y"].startswith("the ConstantOfShape node making 'z' takes 'nn', made from"), got  # twice
    square = [helper.make_tensor_value_info("x", F, ["N", "N"])]
    assert row_mixing_outputs(_model([node("Relu", ["x"], "y")], square)) == {}


def test_a_square_of_the_batch_broadcast_with_a_column_of_rows_mixes() -> None:
    # zeros(N, N) + x[:, :1]^T: each row holds every row's value.
    nodes = [
        *_square(),
        node("Slice", ["x", "from0", "to1", "ax1"], "x0"),
        node("Transpose", ["x0"], "xt", perm=[1, 0]),
        node("Add", ["z", "xt"], "d"),
        node("Mul", ["d", "d"], "y"),
    ]
    got = row_mixing_outputs(_model(nodes, X))
    assert got["y"].startswith("the Add node making 'd' takes the batch's size as a value"), got


def test_nonzero_over_the_batch_is_each_rows_place() -> None:
    # (lens >= 0).nonzero(): arange(N) made from data; as a value, or as a ScatterND's second column.
    places = [node("GreaterOrEqual", ["lens", "zero"], "all"), node("NonZero", ["all"], "nz")]
    alone = _model([*places, node("Transpose", ["nz"], "cc", perm=[1, 0]), node("Cast", ["cc"], "y", to=F)])
    assert "made from the batch's size by the NonZero node making 'nz'" in row_mixing_outputs(alone)["y"]
    nodes = [
        node("Shape", ["x"], "s"),
        node("Gather", ["s", "zero"], "n", axis=0),
        node("ConstantOfShape", ["s"], "blank", value=ZEROS),
        node("Range", ["zero", "n", "one"], "rows"),
        *places,
        node("Transpose", ["nz"], "cc", perm=[1, 0]),
        node("Unsqueeze", ["rows", "last"], "rc"),
        node("Concat", ["rc", "cc"], "at", axis=-1),
        node("Gather", ["x", "zero"], "first", axis=1),
        node("ScatterND", ["blank", "at", "first"], "y"),
    ]
    assert "y" in row_mixing_outputs(_model(nodes))


def test_a_whole_number_stride_with_offsets_from_another_input_mixes() -> None:
    # x's rows declared 8 wide by a value_info (onnxruntime runs x with 6): offsets bounded by b's
    # 8 columns reach the next row.
    inputs = [
        helper.make_tensor_value_info("x", F, ["N", "T", 4]),
        helper.make_tensor_value_info("b", F, ["N", 8]),
    ]
    nodes = [
        node("Identity", ["x"], "x8"),
        node("Shape", ["x8"], "s"),
        node("Gather", ["s", "zero"], "n", axis=0),
        node("Flatten", ["x8"], "flat", axis=2),
        node("Range", ["zero", "n", "one"], "rows"),
        node("Mul", ["rows", "eight"], "starts"),
        node("ArgMax", ["b"], "top", axis=1, keepdims=0),
        node("Add", ["top", "starts"], "at"),
        node("Gather", ["flat", "at"], "y", axis=0),
    ]
    model = _model(nodes, inputs, inits=[ints("eight", 8)])
    model.graph.value_info.append(helper.make_tensor_value_info("x8", F, ["N", 8, 4]))
    assert "y" in row_mixing_outputs(model)


def _positions_pick(cast_to: int, step: str = "one") -> onnx.ModelProto:
    """h = x[:, :1] + table[arange(0, cast(x.shape[1]), step)], then h[arange(N), argmax over x's steps]."""
    nodes = [
        node("Shape", ["x"], "s"),
        node("Gather", ["s", "one"], "t", axis=0),
        node("Cast", ["t"], "t_cast", to=cast_to),
        node("Cast", ["t_cast"], "t64", to=I64),
        node("Range", ["zero", "t64", step], "pos"),
        node("Gather", ["table", "pos"], "pe", axis=0),
        node("ReduceSum", ["x", "ax1"], "x0", keepdims=1),
        node("Add", ["x0", "pe"], "h"),
        node("ReduceSum", ["x", "ax2"], "sums", keepdims=0),
        node("ArgMax", ["sums"], "idx", axis=1, keepdims=0),
        node("Shape", ["h"], "hs"),
        node("Gather", ["hs", "zero"], "hn", axis=0),
        node("Gather", ["hs", "one"], "ht", axis=0),
        node("Flatten", ["h"], "flat", axis=2),
        node("Range", ["zero", "hn", "one"], "rows"),
        node("Mul", ["rows", "ht"], "starts"),
        node("Add", ["idx", "starts"], "at"),
        node("Gather", ["flat", "at"], "y", axis=0),
    ]
    inputs = [helper.make_tensor_value_info("x", F, ["N", "T", 4])]
    table = numpy_helper.from_array(np.ones((300, 4), np.float32), "table")
    return _model(nodes, inputs, inits=[ints("ax2", [2]), table])


def test_a_size_cast_through_a_narrow_type_is_not_the_dim() -> None:
    # uint8(257) is 1: the Range is one step long, not T; the pick reached the next row.
    assert row_mixing_outputs(_positions_pick(I64)) == {}
    for narrow in (TensorProto.UINT8, TensorProto.INT8, TensorProto.INT16):
        assert "y" in row_mixing_outputs(_positions_pick(narrow)), narrow


def test_a_step_a_client_may_send_is_not_a_constant() -> None:
    # `step` an overridable initializer the config lists as an input: a client sent 2.
    model = _positions_pick(I64, step="step")
    model.graph.initializer.append(ints("step", 1))
    model.graph.input.append(helper.make_tensor_value_info("step", I64, []))
    assert "y" in row_mixing_outputs(model, fed={"step"})


def _softmax_after_view(opset: int, domain: str = "") -> onnx.ModelProto:
    """x [N, T, 4] viewed as [N, T, 2, 2] by its own sizes, then a Softmax over the batch (at
    opset 11 and 12 over the batch's axis after a Transpose, Softmax-11 coercing to two dims)."""
    nodes = [
        *own_view("q0", ["two", "two"], axes=None if opset < 13 else "ax0"),
        node("Transpose", ["q0"], "q", perm=[1, 0, 2, 3]),
        node("Softmax", ["q"], "y", axis=1),
    ]
    for made in nodes:
        made.domain = domain
    inputs = [helper.make_tensor_value_info("x", F, ["N", "T", 4])]
    model = _model(nodes, inputs, inits=[ints("two", [2])], opset=opset)
    model.opset_import[0].domain = domain
    return model


def test_a_softmax_over_the_batch_after_a_view_is_read_at_opsets_11_and_12() -> None:
    for opset in (11, 12, 13, 17):
        got = row_mixing_outputs(_softmax_after_view(opset))
        assert "the Softmax node making 'y' works along the batch's axis" in got["y"], opset


def test_onnxs_domain_spelt_ai_onnx_is_read() -> None:
    for opset in (13, 17):
        got = row_mixing_outputs(_softmax_after_view(opset, "ai.onnx"))
        assert "the Softmax node making 'y' works along the batch's axis" in got["y"], opset


def _view_in_branch(axis: int) -> onnx.ModelProto:
    """An If whose branches view x [N, T, 4] as [N, T, 2, 2] by its own sizes and take a Softmax
    over `axis`, the view's constants the main graph's initializers."""

    def branch(name: str) -> onnx.GraphProto:
        nodes = [*own_view("q", ["two", "two"], axes="ax0"), node("Softmax", ["q"], "yb", axis=axis)]
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info("yb", F, None)])

    choose = helper.make_node("If", ["cond"], ["y"], then_branch=branch("then"), else_branch=branch("else"))
    inputs = [helper.make_tensor_value_info("x", F, ["N", "T", 4])]
    inits = [ints("two", [2]), numpy_helper.from_array(np.array(True), "cond")]
    return _model([choose], inputs, inits=inits)


def test_a_view_in_a_branch_with_the_main_graphs_constants_is_read() -> None:
    # onnx's inference gave the branch's view no shape: the Softmax over the batch was not read.
    got = row_mixing_outputs(_view_in_branch(0))
    assert "the Softmax node making 'yb' works along the batch's axis, axis 0 of 'q'" in got["y"], got
    assert row_mixing_outputs(_view_in_branch(3)) == {}
