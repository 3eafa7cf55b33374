"""The _mixing cases of the counts corpus (scripts/size_count_cases.py): the batch's size N used as a
width, a crop, an axis, a trip count or a value. One request alone sees N = 1, four batched see
N = 4, so each answers a batched request with another shape or other values than alone: each must be
refused a batched load, or answered as alone. The cases the session 56 tester found batched, wrong,
OK (a Resize to sizes [N, 1, N], a Reshape to (min(N, 2), -1), an Expand, an AffineGrid's, a
MaxUnpool's or a CenterCropPad's size from it) and their kin."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper as h
from onnx import numpy_helper
from size_count_cases import F, Graph, Source, f32, filled


def _source(name: str, m: onnx.ModelProto, *inputs: np.ndarray) -> Source:
    return Source(f"count_{name}_mixing", m, tuple(inputs))


def resize_sizes_n_1_n() -> Source:
    g = Graph()
    n1 = g.size1()
    g.op("Resize", ["x", "", "", g.cat(n1, g.const([1]), n1)], out="y", mode="nearest")
    return _source(
        "resize_sizes_n_1_n", g.model([("x", ["N", 1, 2])], [("y", ["N", 1, "w"])]), f32(30, 4, 1, 2)
    )


def resize_sizes_min() -> Source:
    g = Graph()
    sizes = g.cat(g.size1(), g.const([1]), g.min_n(2))
    g.op("Resize", ["x", "", "", sizes], out="y", mode="nearest")
    return _source(
        "resize_sizes_min", g.model([("x", ["N", 1, 2])], [("y", ["N", 1, "w"])]), f32(31, 4, 1, 2)
    )


def reshape_min_softmax() -> Source:
    """Reshape to (min(N, 2), -1), Softmax over it, back to (N, -1): rows 0 and 1 share a softmax."""
    g = Graph()
    two = g.op("Reshape", ["x", g.cat(g.min_n(2), g.const([-1]))])
    soft = g.op("Softmax", [two], axis=-1)
    g.op("Reshape", [soft, g.cat(g.size1(), g.const([-1]))], out="y")
    return _source("reshape_min_softmax", g.model([("x", ["N", 6])], [("y", ["N", 6])]), f32(32, 4, 6))


def center_crop_pad_n() -> Source:
    g = Graph()
    g.op("CenterCropPad", ["x", g.size1()], out="y", axes=[1])
    m = g.model([("x", ["N", 6])], [("y", ["N", "w"])], opset=18)
    return _source("center_crop_pad_n", m, f32(33, 4, 6))


def loop_counter() -> Source:
    """A Loop of N iterations carrying a float count (0, + 1 each), which multiplies x."""
    body = h.make_graph(
        [
            h.make_node("Identity", ["cond_in"], ["cond_out"]),
            h.make_node("Add", ["count_in", "one"], ["count_out"]),
        ],
        "body",
        [
            h.make_tensor_value_info("i", onnx.TensorProto.INT64, []),
            h.make_tensor_value_info("cond_in", onnx.TensorProto.BOOL, []),
            h.make_tensor_value_info("count_in", F, []),
        ],
        [
            h.make_tensor_value_info("cond_out", onnx.TensorProto.BOOL, []),
            h.make_tensor_value_info("count_out", F, []),
        ],
        [onnx.numpy_helper.from_array(np.array(1.0, np.float32), "one")],
    )
    g = Graph()
    count = g.op("Loop", [g.size(), g.const(True, np.bool_), g.const(0.0, np.float32)], body=body)
    g.op("Mul", ["x", count], out="y")
    return _source("loop_counter", g.model([("x", ["N", 3])], [("y", ["N", 3])]), f32(34, 4, 3))


def affine_grid_min() -> Source:
    g = Graph()
    size = g.cat(g.size1("theta"), g.const([1, 2]), g.min_n(2, "theta"))
    g.op("AffineGrid", ["theta", size], out="y")
    m = g.model([("theta", ["N", 2, 3])], [("y", ["N", 2, "w", 2])], opset=20)
    theta = np.tile(np.array([[1, 0, 0], [0, 1, 0]], np.float32), (4, 1, 1)) + 0.2 * f32(35, 4, 2, 3)
    return _source("affine_grid_min", m, theta)


def expand_min() -> Source:
    g = Graph()
    g.op("Expand", ["x", g.cat(g.size1(), g.min_n(2))], out="y")
    return _source("expand_min", g.model([("x", ["N", 1])], [("y", ["N", "w"])]), f32(36, 4, 1))


def max_unpool_min() -> Source:
    """MaxUnpool to output_shape [N, 1, 4 * min(N, 2)]: a batch's rows land in each other's."""
    g = Graph()
    pooled = g.op("MaxPool", ["x"], outs=2, kernel_shape=[2], strides=[2])
    shape = g.cat(g.size1(), g.const([1]), g.op("Mul", [g.const([4]), g.min_n(2)]))
    g.op("MaxUnpool", [pooled, pooled + "_1", shape], out="y", kernel_shape=[2], strides=[2])
    return _source("max_unpool_min", g.model([("x", ["N", 1, 4])], [("y", ["N", 1, "w"])]), f32(37, 4, 1, 4))


def tile_n_by_n() -> Source:
    """A constant [1, 1] tiled by (N, N), beside x."""
    g = Graph()
    n1 = g.size1()
    block = g.op("Tile", [g.const([[0.5]], np.float32), g.cat(n1, n1)])
    g.op("Concat", ["x", block], out="y", axis=1)
    return _source("tile_n_by_n", g.model([("x", ["N", 3])], [("y", ["N", "w"])]), f32(38, 4, 3))


def reduce_mean_axes_sub() -> Source:
    """x - ReduceMean(x, axes = N - N) (keepdims, opset 18): the mean over the batch."""
    g = Graph()
    n1 = g.size1()
    mean = g.op("ReduceMean", ["x", g.op("Sub", [n1, n1])], keepdims=1)
    g.op("Sub", ["x", mean], out="y")
    m = g.model([("x", ["N", 3])], [("y", ["N", 3])], opset=18)
    return _source("reduce_mean_axes_sub", m, f32(39, 4, 3))


def reduce_sum_axes_min() -> Source:
    """x + ReduceSum(x, axes = min(N, 2) - 1) (opset 13's axes input): axis 0 alone, 1 batched."""
    g = Graph()
    axes = g.op("Sub", [g.min_n(2), g.const([1])])
    g.op("Add", ["x", g.op("ReduceSum", ["x", axes], keepdims=1)], out="y")
    m = g.model([("x", ["N", 3])], [("y", ["N", 3])], opset=13)
    return _source("reduce_sum_axes_min", m, f32(40, 4, 3))


def unsqueeze_axes_min() -> Source:
    """Unsqueeze at min(N, 3) - 1, then a Softmax over the last axis: x's own alone, a unit batched."""
    g = Graph()
    axes = g.op("Sub", [g.min_n(3), g.const([1])])
    g.op("Softmax", [g.op("Unsqueeze", ["x", axes])], out="y", axis=-1)
    return _source("unsqueeze_axes_min", g.model([("x", ["N", 3])], [("y", ["N", "a", "b"])]), f32(41, 4, 3))


def top_k_n() -> Source:
    g = Graph()
    g.op("TopK", ["x", g.size1()], out="y", outs=2, axis=1)
    return _source("top_k_n", g.model([("x", ["N", 8])], [("y", ["N", "k"])]), f32(42, 4, 8))


def one_hot_depth_n() -> Source:
    g = Graph()
    index = g.op("ArgMax", ["x"], axis=1, keepdims=0)
    g.op("OneHot", [index, g.size(), g.const([0.0, 1.0], np.float32)], out="y")
    return _source("one_hot_depth_n", g.model([("x", ["N", 3])], [("y", ["N", "depth"])]), f32(43, 4, 3))


def trilu_k_n() -> Source:
    g = Graph()
    g.op("Trilu", ["x", g.size()], out="y")
    return _source("trilu_k_n", g.model([("x", ["N", 4, 4])], [("y", ["N", 4, 4])]), f32(44, 4, 4, 4))


def cum_sum_axis_n() -> Source:
    """CumSum along min(N, 2) - 1: the batch's axis alone, the features' batched."""
    g = Graph()
    axis = g.op("Sub", [g.op("Min", [g.size(), g.const(2)]), g.const(1)])
    g.op("CumSum", ["x", axis], out="y")
    return _source("cum_sum_axis_n", g.model([("x", ["N", 3])], [("y", ["N", 3])]), f32(45, 4, 3))


def pad_by_n() -> Source:
    g = Graph()
    g.op("Pad", ["x", g.cat(g.const([0, 0, 0]), g.size1())], out="y")
    return _source("pad_by_n", g.model([("x", ["N", 3])], [("y", ["N", "w"])]), f32(46, 4, 3))


def divide_by_n() -> Source:
    g = Graph()
    g.op("Div", ["x", g.op("Cast", [g.size()], to=F)], out="y")
    return _source("divide_by_n", g.model([("x", ["N", 3])], [("y", ["N", 3])]), f32(47, 4, 3))


def add_range_n() -> Source:
    """x + Range(0, N)[:, None]: each row plus its place in the batch."""
    g = Graph()
    places = g.op("Range", [g.const(0), g.size(), g.const(1)])
    column = g.op("Unsqueeze", [g.op("Cast", [places], to=F), g.const([1])])
    g.op("Add", ["x", column], out="y")
    return _source("add_range_n", g.model([("x", ["N", 3])], [("y", ["N", 3])]), f32(48, 4, 3))


def where_expand_reduce_sum() -> Source:
    """A constant [1, 1] expanded to [N, 1] through a legacy expand's Where, summed over the batch's
    axis (keepdims) and added to x: x + N * c."""
    g = Graph()
    shape = g.cat(g.size1(), g.const([-1]))
    ones = g.op("ConstantOfShape", [g.const([2])], value=filled(1))
    wanted = g.op("Where", [g.op("Equal", [shape, g.const([-1, -1])]), ones, shape])
    copies = g.op("Expand", [g.const([[0.75]], np.float32), wanted])
    g.op("Add", ["x", g.op("ReduceSum", [copies, g.const([0])], keepdims=1)], out="y")
    return _source("where_expand_reduce_sum", g.model([("x", ["N", 3])], [("y", ["N", 3])]), f32(49, 4, 3))


def loop_stacked_iterations() -> Source:
    """A Loop of N iterations stacking Cast(iteration): arange(N), added to x (a tester, s57)."""
    body = h.make_graph(
        [h.make_node("Identity", ["cond_in"], ["cond_out"]), h.make_node("Cast", ["i"], ["k"], to=F)],
        "body",
        [
            h.make_tensor_value_info("i", onnx.TensorProto.INT64, []),
            h.make_tensor_value_info("cond_in", onnx.TensorProto.BOOL, []),
        ],
        [
            h.make_tensor_value_info("cond_out", onnx.TensorProto.BOOL, []),
            h.make_tensor_value_info("k", F, []),
        ],
    )
    g = Graph()
    stacked = g.op("Loop", [g.size(), g.const(True, np.bool_)], body=body)
    g.op("Add", ["x", g.op("Unsqueeze", [stacked, g.const([1])])], out="y")
    return _source("loop_stacked_iterations", g.model([("x", ["N", 3])], [("y", ["N", 3])]), f32(50, 4, 3))


def if_returns_outer_n() -> Source:
    """An If whose branch returns Cast(N) read from the outer graph, which multiplies x (s57)."""
    g = Graph()
    n = g.op("Cast", [g.size()], to=F)
    then = h.make_graph(
        [h.make_node("Identity", [n], ["k"])], "then", [], [h.make_tensor_value_info("k", F, [])]
    )
    one = h.make_node("Constant", [], ["k1"], value=h.make_tensor("v", F, [], [1.0]))
    other = h.make_graph([one], "else", [], [h.make_tensor_value_info("k1", F, [])])
    k = g.op("If", [g.const(True, np.bool_)], then_branch=then, else_branch=other)
    g.op("Mul", ["x", k], out="y")
    return _source("if_returns_outer_n", g.model([("x", ["N", 3])], [("y", ["N", 3])]), f32(51, 4, 3))


def split_second_n() -> Source:
    """Split([N, N]) into two: the second part, N, multiplies x (s57)."""
    g = Graph()
    n = g.op("Cast", [g.size1()], to=F)
    second = g.op("Split", [g.cat(n, n), g.const([1, 1])], outs=2) + "_1"
    g.op("Mul", ["x", second], out="y")
    return _source("split_second_n", g.model([("x", ["N", 3])], [("y", ["N", 3])]), f32(52, 4, 3))


def reshape_constant_by_n() -> Source:
    """arange(8) reshaped to (N, -1) and summed along its rows: 28 alone, 1 for the first of four (s57)."""
    g = Graph()
    rows = g.op("Reshape", [g.const(np.arange(8), np.float32), g.cat(g.size1(), g.const([-1]))])
    g.op("Add", ["x", g.op("ReduceSum", [rows, g.const([1])], keepdims=1)], out="y")
    return _source("reshape_constant_by_n", g.model([("x", ["N", 3])], [("y", ["N", 3])]), f32(53, 4, 3))


def shape_of_range_n() -> Source:
    """x * the length of Range(0, N), read by a Shape (onnx names that length no dim; s57)."""
    g = Graph()
    rows = g.op("Range", [g.const(0), g.size(), g.const(1)])
    g.op("Mul", ["x", g.op("Cast", [g.op("Shape", [rows])], to=F)], out="y")
    return _source("shape_of_range_n", g.model([("x", ["N", 3])], [("y", ["N", 3])]), f32(54, 4, 3))


def rnn_steps_n_unnamed() -> Source:
    """An RNN over 8 constant steps, sequence_lens N, its Y left unnamed: x * its state (s57)."""
    g = Graph()
    lens = g.op("Cast", [g.size1()], to=onnx.TensorProto.INT32)
    steps = g.const(np.arange(8, dtype=np.float32).reshape(8, 1, 1) / 8, np.float32)
    weights = [g.const(np.full((1, 1, 1), 0.5), np.float32) for _ in range(2)]
    g.nodes.append(h.make_node("RNN", [steps, *weights, "", lens], ["", "state"], hidden_size=1))
    g.op("Mul", ["x", g.op("Reshape", ["state", g.const([1])])], out="y")
    return _source("rnn_steps_n_unnamed", g.model([("x", ["N", 3])], [("y", ["N", 3])]), f32(55, 4, 3))


def seq_first_reshape_2_n() -> Source:
    """x [N, S, 6] time-major, reshaped to [2, N, -1] and back: rows move unless S is 2 (s57)."""
    g = Graph()
    major = g.op("Transpose", ["x"], perm=[1, 0, 2])
    rows = g.op("Reshape", [major, g.cat(g.const([2]), g.size1(), g.const([-1]))])
    g.op("Transpose", [rows], out="y", perm=[1, 0, 2])
    return _source(
        "seq_first_reshape_2_n", g.model([("x", ["N", "S", 6])], [("y", ["N", 2, "w"])]), f32(56, 4, 3, 6)
    )


def pad_truncated_then_n() -> Source:
    """x padded by (6 - 7) / 2 + 1 = 1 row ahead (ONNX truncates), cut back to x[:N] (s57)."""
    g = Graph()
    width = g.op("Slice", [g.op("Shape", ["x"]), g.const([1]), g.const([2])])
    ahead = g.op("Add", [g.op("Div", [g.op("Sub", [width, g.const([7])]), g.const([2])]), g.const([1])])
    padded = g.op("Pad", ["x", g.cat(ahead, g.const([0]), g.const([0]), g.const([0]))])
    g.op("Slice", [padded, g.const([0]), g.size1(), g.const([0])], out="y")
    return _source("pad_truncated_then_n", g.model([("x", ["N", 6])], [("y", ["N", 6])]), f32(57, 4, 6))


def if_two_ranks_n() -> Source:
    """x / Shape(t)[0], t = If(True, x, x[None]): onnx tells t no rank, and its first length, N, had
    been read as no size (session 65)."""
    same = h.make_graph(
        [h.make_node("Identity", ["x"], ["a"])], "a", [], [h.make_tensor_value_info("a", F, None)]
    )
    grown = h.make_graph(
        [h.make_node("Unsqueeze", ["x", "axis0"], ["b"])], "b", [], [h.make_tensor_value_info("b", F, None)]
    )
    g = Graph()
    g.nodes.append(
        h.make_node("Constant", [], ["axis0"], value=numpy_helper.from_array(np.array([0], np.int64)))
    )
    t = g.op("If", [g.const(True, np.bool_)], then_branch=same, else_branch=grown)
    n = g.op("Cast", [g.op("Gather", [g.op("Shape", [t]), g.const(0)], axis=0)], to=F)
    g.op("Div", ["x", n], out="y")
    return _source("if_two_ranks_n", g.model([("x", ["N", 3])], [("y", ["N", 3])]), f32(58, 4, 3))


MIXING = (
    resize_sizes_n_1_n, resize_sizes_min, reshape_min_softmax, center_crop_pad_n, loop_counter,
    affine_grid_min, expand_min, max_unpool_min, tile_n_by_n, reduce_mean_axes_sub, reduce_sum_axes_min,
    unsqueeze_axes_min, top_k_n, one_hot_depth_n, trilu_k_n, cum_sum_axis_n, pad_by_n, divide_by_n,
    add_range_n, where_expand_reduce_sum, loop_stacked_iterations, if_returns_outer_n, split_second_n,
    reshape_constant_by_n, shape_of_range_n, rnn_steps_n_unnamed, seq_first_reshape_2_n,
    pad_truncated_then_n, if_two_ranks_n,
)  # fmt: skip
