"""Cases of the counts corpus (scripts/size_count_cases.py) the load's reading had not read (a tester,
session 58): an axis given as a computed input, a scatter into or an element gather from a table
without the batch, a model-local function's default attribute, an output declared the batch's that
the graph makes another axis, a detection count over every image, a table a Loop stacks as long as
another axis of x (its axis 1 unnamed, or the Size of a row: session 59), and a Concat pinning the
batch to a constant a Loop returns. The _mixing ones loaded batched and answered four clients wrong
with status OK at a1132d6 (session 59's at ec0a446); the _rowwise ones are their kin that keep rows,
and must still batch.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper as h
from onnx import numpy_helper
from row_mixing_cases import Source
from size_count_cases import F, Graph, f32

BIG = -(1 << 30)


def _mixing(name: str, m: onnx.ModelProto, *inputs: np.ndarray) -> Source:
    return Source(f"count_{name}_mixing", m, tuple(inputs))


def _rowwise(name: str, m: onnx.ModelProto, *inputs: np.ndarray) -> Source:
    return Source(f"count_{name}_rowwise", m, tuple(inputs))


def _rank_minus_2(g: Graph) -> str:
    """x.dim() - 2 as a [1] int64, as a legacy export without constant folding writes it (0 here)."""
    return g.op("Sub", [g.op("Shape", [g.op("Shape", ["x"])]), g.const([2])])


def cum_sum_axis_rank_minus_2() -> Source:
    g = Graph()
    g.op("CumSum", ["x", g.op("Squeeze", [_rank_minus_2(g), g.const([0])])], out="y")
    return _mixing("cum_sum_axis_rank_minus_2", g.model([("x", ["N", 4])], [("y", ["N", 4])]), f32(60, 4, 4))


def reduce_sum_axes_rank_minus_2() -> Source:
    g = Graph()
    g.op("Add", ["x", g.op("ReduceSum", ["x", _rank_minus_2(g)], keepdims=1)], out="y")
    m = g.model([("x", ["N", 4])], [("y", ["N", 4])], opset=18)
    return _mixing("reduce_sum_axes_rank_minus_2", m, f32(61, 4, 4))


def reduce_max_axes_cut_empty() -> Source:
    """Axes Shape(x)[5:6]: none, so every axis (noop_with_empty_axes is 0)."""
    g = Graph()
    axes = g.op("Slice", [g.op("Shape", ["x"]), g.const([5]), g.const([6])])
    g.op("Add", ["x", g.op("ReduceMax", ["x", axes], keepdims=1)], out="y")
    m = g.model([("x", ["N", 4])], [("y", ["N", 4])], opset=18)
    return _mixing("reduce_max_axes_cut_empty", m, f32(62, 4, 4))


def unsqueeze_axes_computed_softmax() -> Source:
    """Unsqueeze at x.dim() - 2 makes [1, N, 4]; a Softmax over its axis 1 is over the batch."""
    g = Graph()
    axes = _rank_minus_2(g)
    soft = g.op("Softmax", [g.op("Unsqueeze", ["x", axes])], axis=1)
    g.op("Squeeze", [soft, axes], out="y")
    m = g.model([("x", ["N", 4])], [("y", ["N", 4])], opset=13)
    return _mixing("unsqueeze_axes_computed_softmax", m, f32(63, 4, 4))


def slice_axes_computed_flip() -> Source:
    g = Graph()
    g.op("Slice", ["x", g.const([-1]), g.const([BIG]), _rank_minus_2(g), g.const([-1])], out="y")
    m = g.model([("x", ["N", 4])], [("y", ["N", 4])], opset=13)
    return _mixing("slice_axes_computed_flip", m, f32(64, 4, 4))


def slice_axes_computed_whole() -> Source:
    """From 0 to the end by 1 along whichever axis: every axis kept whole."""
    g = Graph()
    whole = g.op("Slice", ["x", g.const([0]), g.const([1 << 62]), _rank_minus_2(g), g.const([1])])
    g.op("Softmax", [whole], out="y", axis=1)
    m = g.model([("x", ["N", 4])], [("y", ["N", 4])], opset=13)
    return _rowwise("slice_axes_computed_whole", m, f32(65, 4, 4))


def _argmax(g: Graph) -> str:
    return g.op("ArgMax", ["x"], axis=1, keepdims=1)  # [N, 1], 0..3


def scatter_elements_into_table() -> Source:
    """Each row writes its first value into a [8, 4] table of zeros; the table's sum is added back."""
    g = Graph()
    first = g.op("Slice", ["x", g.const([0]), g.const([1]), g.const([1])])
    table = g.op("ScatterElements", [g.const(np.zeros((8, 4)), np.float32), _argmax(g), first], axis=1)
    g.op("Add", ["x", g.op("ReduceSum", [table, g.const([0])], keepdims=1)], out="y")
    m = g.model([("x", ["N", 4])], [("y", ["N", 4])], opset=13)
    return _mixing("scatter_elements_into_table", m, f32(66, 4, 4))


def scatter_nd_into_table() -> Source:
    g = Graph()
    table = g.op("ScatterND", [g.const(np.zeros((8, 4)), np.float32), _argmax(g), "x"])
    g.op("Add", ["x", g.op("ReduceSum", [table, g.const([0])], keepdims=1)], out="y")
    m = g.model([("x", ["N", 4])], [("y", ["N", 4])], opset=13)
    return _mixing("scatter_nd_into_table", m, f32(67, 4, 4))


def gather_elements_table_place() -> Source:
    """Row i of the answer reads row i of a [8, 4] table: a request's answer is its place."""
    g = Graph()
    indices = g.op("Expand", [_argmax(g), g.const([1, 4])])
    picked = g.op("GatherElements", [g.const(f32(68, 8, 4), np.float32), indices], axis=1)
    g.op("Add", ["x", picked], out="y")
    m = g.model([("x", ["N", 4])], [("y", ["N", 4])], opset=13)
    return _mixing("gather_elements_table_place", m, f32(69, 4, 4))


def gather_nd_table_lookup() -> Source:
    """A row of a [8, 4] table looked up by each row's own index."""
    g = Graph()
    picked = g.op("GatherND", [g.const(f32(70, 8, 4), np.float32), _argmax(g)])
    g.op("Add", ["x", picked], out="y")
    m = g.model([("x", ["N", 4])], [("y", ["N", 4])], opset=13)
    return _rowwise("gather_nd_table_lookup", m, f32(71, 4, 4))


def scatter_elements_own_rows() -> Source:
    """Each row writes into its own row (the data is x): rows kept."""
    g = Graph()
    first = g.op("Slice", ["x", g.const([0]), g.const([1]), g.const([1])])
    g.op("ScatterElements", ["x", _argmax(g), first], out="y", axis=1)
    m = g.model([("x", ["N", 4])], [("y", ["N", 4])], opset=13)
    return _rowwise("scatter_elements_own_rows", m, f32(72, 4, 4))


def _function_softmax(default_axis: int) -> onnx.ModelProto:
    """y = F(x), a local function Softmax(a, axis=@axis) whose axis defaults to `default_axis`."""
    soft = h.make_node("Softmax", ["a"], ["b"])
    soft.attribute.append(h.make_attribute_ref("axis", onnx.AttributeProto.INT))
    function = h.make_function("local", "Soft", ["a"], ["b"], [soft], [h.make_opsetid("", 17)])
    function.attribute_proto.append(h.make_attribute("axis", default_axis))
    graph = h.make_graph(
        [h.make_node("Soft", ["x"], ["y"], domain="local")],
        "g",
        [h.make_tensor_value_info("x", F, ["N", 4])],
        [h.make_tensor_value_info("y", F, ["N", 4])],
    )
    opsets = [h.make_opsetid("", 17), h.make_opsetid("local", 1)]
    m = h.make_model(graph, opset_imports=opsets, functions=[function])
    m.ir_version = 9
    onnx.checker.check_model(m)
    return m


def function_default_axis_0() -> Source:
    return _mixing("function_default_axis_0", _function_softmax(0), f32(73, 4, 4))


def function_default_axis_last() -> Source:
    return _rowwise("function_default_axis_last", _function_softmax(-1), f32(74, 4, 4))


def declared_transpose() -> Source:
    """y = x^T, [4, N], declared ['N', 'K'] (a wrong dynamic_axes)."""
    g = Graph()
    g.op("Transpose", ["x"], out="y", perm=[1, 0])
    return _mixing("declared_transpose", g.model([("x", ["N", 4])], [("y", ["N", "K"])]), f32(75, 4, 4))


def declared_transpose_back() -> Source:
    """y = (x^T)^T, declared ['N', 4]: the batch's axis back first."""
    g = Graph()
    g.op("Transpose", [g.op("Transpose", ["x"], perm=[1, 0])], out="y", perm=[1, 0])
    return _rowwise("declared_transpose_back", g.model([("x", ["N", 4])], [("y", ["N", 4])]), f32(76, 4, 4))


def detections_counted() -> Source:
    """The number of boxes NonMaxSuppression keeps, over every image of the batch, added to each."""
    g = Graph()
    kept = g.op("NonMaxSuppression", ["boxes", "scores", g.const([3])])
    count = g.op("Cast", [g.op("Gather", [g.op("Shape", [kept]), g.const(0)])], to=F)
    g.op("Add", [g.op("ReduceSum", ["scores", g.const([2])], keepdims=0), count], out="y")
    m = g.model([("boxes", ["N", 3, 4]), ("scores", ["N", 1, 3])], [("y", ["N", 1])], opset=13)
    corner = np.array([[0, 0, 1, 1], [0, 0.1, 1, 1.1], [2, 2, 3, 3]], np.float32)  # two overlap
    boxes = np.stack([corner + k for k in range(4)])
    scores = np.abs(f32(77, 4, 1, 3))
    return _mixing("detections_counted", m, boxes, scores)


def _split_halves(g: Graph) -> tuple[str, str]:
    """x [N, 4] split in two along axis 1 by lengths computed from its shape (onnx's inference
    leaves the halves without a shape)."""
    half = g.op("Div", [g.size(axis=1), g.const(2)])
    lens = g.cat(*[g.op("Unsqueeze", [half, g.const([0])])] * 2)
    first = g.op("Split", ["x", lens], outs=2, axis=1)
    return first, first + "_1"


def split_whole_slice_softmax() -> Source:
    """A whole Slice along the batch's axis of a half, then a Softmax over that axis (s58, second)."""
    g = Graph()
    a, _ = _split_halves(g)
    whole = g.op("Slice", [a, g.const([0]), g.const([1 << 62]), g.const([0])])
    g.op("Softmax", [whole], out="y", axis=0)
    return _mixing(
        "split_whole_slice_softmax", g.model([("x", ["N", 4])], [("y", ["N", 2])], opset=13), f32(78, 4, 4)
    )


def split_halves_attention() -> Source:
    """A q/k split by computed lengths, then q k^T per row, a Softmax and a LayerNorm: rows kept."""
    g = Graph()
    q, k = _split_halves(g)
    scores = g.op("Mul", [g.op("Unsqueeze", [q, g.const([2])]), g.op("Unsqueeze", [k, g.const([1])])])
    soft = g.op("Softmax", [scores], axis=-1)
    flat = g.op("ReduceSum", [soft, g.const([2])], keepdims=0)
    ones = g.const(np.ones(2), np.float32)
    g.op("LayerNormalization", [flat, ones, g.const(np.zeros(2), np.float32)], out="y", axis=-1)
    m = g.model([("x", ["N", 4])], [("y", ["N", 2])], opset=17)
    return _rowwise("split_halves_attention", m, f32(79, 4, 4))


def detections_counted_flat() -> Source:
    """The detections counted after a Reshape to [-1] (s58, second)."""
    g = Graph()
    kept = g.op("NonMaxSuppression", ["boxes", "scores", g.const([3])])
    flat = g.op("Reshape", [kept, g.const([-1])])
    count = g.op("Cast", [g.op("Div", [g.size(flat, 0), g.const(3)])], to=F)
    g.op("Add", [g.op("ReduceSum", ["scores", g.const([2])], keepdims=0), count], out="y")
    m = g.model([("boxes", ["N", 3, 4]), ("scores", ["N", 1, 3])], [("y", ["N", 1])], opset=13)
    corner = np.array([[0, 0, 1, 1], [0, 0.1, 1, 1.1], [2, 2, 3, 3]], np.float32)
    return _mixing(
        "detections_counted_flat", m, np.stack([corner + k for k in range(4)]), np.abs(f32(80, 4, 1, 3))
    )


def batch_against_fixed_length() -> Source:
    """x [N, 2] + t [4, 1], summed over axis 0: alone one row spread over 4, batched paired."""
    g = Graph()
    spread = g.op("Add", ["x", g.const(f32(81, 4, 1), np.float32)])
    g.op("Add", ["x", g.op("ReduceSum", [spread, g.const([0])], keepdims=1)], out="y")
    m = g.model([("x", ["N", 2])], [("y", ["N", 2])], opset=13)
    return _mixing("batch_against_fixed_length", m, f32(82, 4, 2))


def untold_length_table() -> Source:
    """x + t, t = table[:k], k = 8 / 2 read from the table's shape (onnx does not tell t's length,
    4), then x[:N]: each request its row plus table row k (s58, y)."""
    g = Graph()
    table = g.const(10 * np.arange(8, dtype=np.float32)[:, None], np.float32)
    half = g.op("Div", [g.size1(table, 0), g.const([2])])
    spread = g.op("Add", ["x", g.op("Slice", [table, g.const([0]), half, g.const([0])])])
    g.op("Slice", [spread, g.const([0]), g.size1(), g.const([0])], out="y")
    m = g.model([("x", ["N", 2])], [("y", ["N", 2])], opset=13)
    return _mixing("untold_length_table", m, f32(83, 4, 2))


def einsum_ellipsis_broadcast() -> Source:
    """Einsum('...j,...j->...j') of x [N, 2] and a [4, 2] weight: the batch broadcast by `...`."""
    g = Graph()
    g.op("Einsum", ["x", g.const(f32(84, 4, 2), np.float32)], out="y", equation="...j,...j->...j")
    m = g.model([("x", ["N", 2])], [("y", ["N", 2])], opset=12)
    return _mixing("einsum_ellipsis_broadcast", m, f32(85, 4, 2))


def detections_counted_in_if() -> Source:
    """NonMaxSuppression inside an If's branches, its detections counted outside (s58, y)."""
    inner = Graph()
    inner.op("NonMaxSuppression", ["boxes", "scores", "keep"], out="kept_in")
    branch = h.make_graph(inner.nodes, "b", [], [h.make_tensor_value_info("kept_in", 7, None)], inner.inits)
    g = Graph()
    g.inits.append(numpy_helper.from_array(np.array([3], np.int64), "keep"))
    kept = g.op("If", [g.const(True, np.bool_)], then_branch=branch, else_branch=branch)
    count = g.op("Cast", [g.size(kept, 0)], to=F)
    g.op("Add", [g.op("ReduceSum", ["scores", g.const([2])], keepdims=0), count], out="y")
    m = g.model([("boxes", ["N", 3, 4]), ("scores", ["N", 1, 3])], [("y", ["N", 1])], opset=13)
    corner = np.array([[0, 0, 1, 1], [0, 0.1, 1, 1.1], [2, 2, 3, 3]], np.float32)
    return _mixing(
        "detections_counted_in_if", m, np.stack([corner + k for k in range(4)]), np.abs(f32(86, 4, 1, 3))
    )


def split_attention_six_deep() -> Source:
    """Six layers of q, k split by lengths read from the shape, softmax(q k^T) @ x (s58, y: the
    fourth was refused)."""
    g = Graph()
    last = "x"
    for _ in range(6):
        half = g.op("Div", [g.size(last, 2), g.const(2)])
        lens = g.cat(*[g.op("Unsqueeze", [half, g.const([0])])] * 2)
        q = g.op("Split", [last, lens], outs=2, axis=-1)
        scores = g.op("MatMul", [q, g.op("Transpose", [q + "_1"], perm=[0, 2, 1])])
        last = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), last])
    g.op("Identity", [last], out="y")
    m = g.model([("x", ["N", 5, 8])], [("y", ["N", 5, 8])], opset=17)
    return _rowwise("split_attention_six_deep", m, f32(87, 4, 5, 8))


def _turns_body() -> onnx.GraphProto:
    """A Loop's body stacking its iteration number as a [1] float each turn (its own names)."""
    shape = numpy_helper.from_array(np.array([1], np.int64), "turn_shape")
    nodes = [
        h.make_node("Identity", ["cond_in"], ["cond_out"]),
        h.make_node("Cast", ["turn"], ["turn_f"], to=F),
        h.make_node("Reshape", ["turn_f", "turn_shape"], ["turn_row"]),
    ]
    given = [h.make_tensor_value_info("turn", 7, []), h.make_tensor_value_info("cond_in", 9, [])]
    made = [h.make_tensor_value_info("cond_out", 9, []), h.make_tensor_value_info("turn_row", F, [1])]
    return h.make_graph(nodes, "turns", given, made, [shape])


def loop_table_by_other_axis() -> Source:
    """A Loop run Shape(x)[1] times (4) stacks a [4, 1] table; x + t, then [:N]: a batch of four gave
    row i the table's row i, a request alone its row 0 (s58, u2: its lineage ran through x's shape)."""
    g = Graph()
    table = g.op("Loop", [g.size(axis=1), ""], body=_turns_body())
    spread = g.op("Add", ["x", table])
    g.op("Slice", [spread, g.const([0]), g.size1(), g.const([0])], out="y")
    m = g.model([("x", ["N", 4])], [("y", ["N", 4])], opset=13)
    return _mixing("loop_table_by_other_axis", m, f32(88, 4, 4))


def loop_table_by_other_axis_across() -> Source:
    """The same table transposed to [1, 4]: added across each row's values, rows kept."""
    g = Graph()
    table = g.op("Loop", [g.size(axis=1), ""], body=_turns_body())
    g.op("Add", ["x", g.op("Transpose", [table], perm=[1, 0])], out="y")
    m = g.model([("x", ["N", 4])], [("y", ["N", 4])], opset=13)
    return _rowwise("loop_table_by_other_axis_across", m, f32(89, 4, 4))


def loop_table_by_unnamed_axis() -> Source:
    """loop_table_by_other_axis with x declared [N, ?]: its axis 1 had read as no input's length,
    so the table as made from the batch (a tester, session 59: batched, wrong, OK, at ec0a446)."""
    g = Graph()
    table = g.op("Loop", [g.size(axis=1), ""], body=_turns_body())
    g.op("Slice", [g.op("Add", ["x", table]), g.const([0]), g.size1(), g.const([0])], out="y")
    m = g.model([("x", ["N", None])], [("y", ["N", None])], opset=13)
    return _mixing("loop_table_by_unnamed_axis", m, f32(91, 4, 4))


def loop_table_by_row_size() -> Source:
    """The Loop run Size(x[0]) times (4): a Size had read as the batch's (session 59, at ec0a446)."""
    g = Graph()
    table = g.op("Loop", [g.op("Size", [g.op("Gather", ["x", g.const(0)])]), ""], body=_turns_body())
    g.op("Slice", [g.op("Add", ["x", table]), g.const([0]), g.size1(), g.const([0])], out="y")
    m = g.model([("x", ["N", 4])], [("y", ["N", 4])], opset=13)
    return _mixing("loop_table_by_row_size", m, f32(92, 4, 4))


def concat_loop_constant_first() -> Source:
    """Concat(c, x) on axis 1, c a [1, 2] constant a Loop returns (its shape unknown to the load):
    alone each request answered, batched every one INTERNAL (s58, u2)."""
    value = numpy_helper.from_array(np.array([[7, 8]], np.float32), "kept_value")
    nodes = [
        h.make_node("Identity", ["cond_in"], ["cond_out"]),
        h.make_node("Constant", [], ["kept"], value=value),
    ]
    given = [h.make_tensor_value_info(name, t, []) for name, t in (("turn", 7), ("cond_in", 9))]
    given.append(h.make_tensor_value_info("kept_in", F, None))
    made = [h.make_tensor_value_info("cond_out", 9, []), h.make_tensor_value_info("kept", F, None)]
    g = Graph()
    first = g.const(np.zeros((1, 2)), np.float32)
    kept = g.op("Loop", [g.const(2), "", first], body=h.make_graph(nodes, "kept", given, made))
    g.op("Concat", [kept, "x"], out="y", axis=1)
    m = g.model([("x", ["N", 2])], [("y", ["N", 4])], opset=13)
    return _mixing("concat_loop_constant_first", m, f32(90, 1, 2))  # one row: four fail


UNREAD = (
    cum_sum_axis_rank_minus_2, reduce_sum_axes_rank_minus_2, reduce_max_axes_cut_empty,
    unsqueeze_axes_computed_softmax, slice_axes_computed_flip, slice_axes_computed_whole,
    scatter_elements_into_table, scatter_nd_into_table, gather_elements_table_place,
    gather_nd_table_lookup, scatter_elements_own_rows, function_default_axis_0,
    function_default_axis_last, declared_transpose, declared_transpose_back, detections_counted,
    split_whole_slice_softmax, split_halves_attention, detections_counted_flat, batch_against_fixed_length,
    untold_length_table, einsum_ellipsis_broadcast, detections_counted_in_if, split_attention_six_deep,
    loop_table_by_other_axis, loop_table_by_other_axis_across, concat_loop_constant_first,
    loop_table_by_unnamed_axis, loop_table_by_row_size,
)  # fmt: skip
