"""A tester's review of the row-mixing reading (session 58). Batched, wrong, OK at a1132d6: an axis
given as a computed input (CumSum's, a reduction's, DFT's, a Slice's or an Unsqueeze's) read as none;
a scatter into, or an element gather from, a table without the batch; a model-local function's
default attribute dropped by onnx's inliner; an output declared the batch's that the graph makes
another axis; a detection count over every image read as each request's. The served cases are in
scripts/unread_cases.py (tests/integration/test_size_count_sweep.py); these read the pieces."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from server.backends.function_inlining import inlined, with_call_defaults
from server.backends.onnx_filled_shapes import filled_dims
from server.backends.onnx_mixing_graph import DataSizedLengths
from server.backends.onnx_mixing_ops import mixed_axes
from server.backends.onnx_mixing_probe import declared_batch_unmade
from server.backends.onnx_reshape_rows import Moved, reshaped_rows
from server.backends.onnx_row_mixing import row_mixing_outputs
from server.backends.onnx_table_reads import table_mixing

F = TensorProto.FLOAT
N = helper.make_node


def _ints(name: str, values: list[int] | int) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


def _model(
    nodes: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
    opset: int = 17,
    y: list[int | str] | None = None,
    inputs: list[onnx.ValueInfoProto] | None = None,
) -> onnx.ModelProto:
    x = [helper.make_tensor_value_info("x", F, ["N", 4])]
    out = helper.make_tensor_value_info("y", F, y or ["N", 4])
    graph = helper.make_graph(nodes, "g", inputs or x, [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


SEL = "the NonMaxSuppression node making 'sel'"
RANK_MINUS_2 = [N("Shape", ["x"], ["sx"]), N("Shape", ["sx"], ["r"]), N("Sub", ["r", "two"], ["ax"])]
TWO = _ints("two", [2])


def _unknown(index: int) -> None:
    return None


@pytest.mark.parametrize("op", ["CumSum", "CumProd"])
def test_a_computed_axis_may_be_any(op: str) -> None:
    node = N(op, ["x", "ax"], ["y"])
    assert mixed_axes(node, [2, 1], 17, _unknown) == [(0, range(2))]  # was []: none mixed


def test_computed_reduction_axes_may_be_any_and_a_dfts_axis_too() -> None:
    assert mixed_axes(N("ReduceSum", ["x", "ax"], ["y"]), [3, 1], 18, _unknown) == [(0, range(3))]
    assert mixed_axes(N("DFT", ["x", "", "ax"], ["y"]), [3], 20, _unknown) == [(0, range(3))]


def test_a_slice_along_computed_axes_keeps_rows_only_where_every_bound_keeps_its_axis_whole() -> None:
    values = {1: np.array([0]), 2: np.array([1 << 62]), 4: np.array([1])}
    whole = N("Slice", ["x", "s", "e", "ax", "st"], ["y"])
    assert mixed_axes(whole, [2, 1, 1, 1, 1], 13, values.get) == [(0, [])]
    flip = {1: np.array([-1]), 2: np.array([-(1 << 30)]), 4: np.array([-1])}
    assert mixed_axes(whole, [2, 1, 1, 1, 1], 13, flip.get) == [(0, range(2))]


def test_a_pad_over_computed_axes_may_pad_any() -> None:
    # pads [0, 1, 0, 1] over axes [1, 0] pad axis 0 (the batch's); read as axes [0, 1] only axis 1 was.
    node = N("Pad", ["x", "pads", "", "ax"], ["y"])
    values = {1: np.array([0, 1, 0, 1])}
    assert mixed_axes(node, [2, 1, 0, 1], 18, values.get) == [(0, range(2))]


@pytest.mark.parametrize(
    ("name", "nodes", "opset"),
    [
        (
            "cumsum",
            [N("Size", ["sx"], ["r0"]), N("Sub", ["r0", "two1"], ["a0"]), N("CumSum", ["x", "a0"], ["y"])],
            17,
        ),
        ("reduce", [N("ReduceSum", ["x", "ax"], ["s"], keepdims=1), N("Add", ["x", "s"], ["y"])], 18),
        (
            "unsqueeze",
            [
                N("Unsqueeze", ["x", "ax"], ["u"]),
                N("Softmax", ["u"], ["s"], axis=1),
                N("Squeeze", ["s", "ax"], ["y"]),
            ],
            13,
        ),
    ],
)
def test_computed_axes_over_the_batch_are_refused(name: str, nodes: list[onnx.NodeProto], opset: int) -> None:
    m = _model([*RANK_MINUS_2, *nodes], [TWO, _ints("two1", 2)], opset=opset)
    assert "y" in row_mixing_outputs(m), name


def test_an_unsqueeze_at_an_axis_computed_from_the_rank_and_the_softmax_after_it_is_refused() -> None:
    # The rank - 2 is read at load since session 62 (a Size of a Shape's dims, all numbers): the
    # Unsqueeze's output is [1, N, 4] and the Softmax is along the batch's axis, said so.
    nodes = [
        *RANK_MINUS_2,
        N("Unsqueeze", ["x", "ax"], ["u"]),
        N("Softmax", ["u"], ["s"], axis=1),
        N("Squeeze", ["s", "ax"], ["y"]),
    ]
    why = row_mixing_outputs(_model(nodes, [TWO], opset=13))["y"]
    assert "works along the batch's axis, axis 1 of 'u' [1, 'N', 4]" in why


def test_an_unsqueeze_at_an_axis_a_client_sends_leaves_no_shape_and_the_softmax_after_it_is_refused() -> None:
    nodes = [
        N("Unsqueeze", ["x", "ax"], ["u"]),
        N("Softmax", ["u"], ["s"], axis=1),
        N("Squeeze", ["s", "ax"], ["y"]),
    ]
    inputs = [
        helper.make_tensor_value_info("x", F, ["N", 4]),
        helper.make_tensor_value_info("ax", TensorProto.INT64, [1]),
    ]
    why = row_mixing_outputs(_model(nodes, [], opset=13, inputs=inputs))["y"]
    assert "works along axes of 'u', made from the batch: its shape is not known" in why


def test_table_mixing_reads_scatters_into_a_table_and_gathers_by_place() -> None:
    dims = {"x": ["N", 4], "tab": [8, 4], "i": ["N", 1], "u": ["N", 1], "ie": ["N", 4], "own": ["N", 4]}
    batch = {"N"}
    scatter = N("ScatterElements", ["tab", "i", "u"], ["t"], axis=1)
    assert "writes every row of the batch ('i') into 'tab'" in (table_mixing(scatter, dims.get, batch) or "")
    assert table_mixing(N("ScatterND", ["nodims", "i", "x"], ["t"]), dims.get, batch) is not None
    assert table_mixing(N("ScatterElements", ["x", "i", "u"], ["t"], axis=1), dims.get, batch) is None
    gather = N("GatherElements", ["tab", "ie"], ["g"], axis=1)
    assert "each request reads its place in the batch" in (table_mixing(gather, dims.get, batch) or "")
    assert table_mixing(N("GatherElements", ["own", "ie"], ["g"], axis=1), dims.get, batch) is None
    # Along axis 0, the batch's: each row's indices pick from the table's rows, a lookup.
    assert table_mixing(N("GatherElements", ["tab", "ie"], ["g"], axis=0), dims.get, batch) is None
    assert table_mixing(N("GatherND", ["tab", "i"], ["g"]), dims.get, batch) is None  # a lookup
    assert table_mixing(N("GatherND", ["tab", "i"], ["g"], batch_dims=1), dims.get, batch) is not None
    assert table_mixing(N("Gather", ["tab", "i"], ["g"]), dims.get, batch) is None  # not read here


def _function_model(axis_default: int, call_axis: int | None = None) -> onnx.ModelProto:
    soft = N("Softmax", ["a"], ["b"])
    soft.attribute.append(helper.make_attribute_ref("axis", onnx.AttributeProto.INT))
    function = helper.make_function("local", "Soft", ["a"], ["b"], [soft], [helper.make_opsetid("", 17)])
    function.attribute_proto.append(helper.make_attribute("axis", axis_default))
    call = N("Soft", ["x"], ["y"], domain="local", **({} if call_axis is None else {"axis": call_axis}))
    graph = helper.make_graph(
        [call],
        "g",
        [helper.make_tensor_value_info("x", F, ["N", 4])],
        [helper.make_tensor_value_info("y", F, ["N", 4])],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)]
    model = helper.make_model(graph, opset_imports=opsets, functions=[function])
    model.ir_version = 9
    return model


def test_a_functions_default_attribute_is_kept_when_inlined() -> None:
    model = _function_model(0)
    softmax = inlined(model).graph.node[0]
    assert [(a.name, a.i) for a in softmax.attribute] == [("axis", 0)]  # onnx's inliner alone: none
    assert not model.graph.node[0].attribute  # the model itself is left as it was
    assert with_call_defaults(_function_model(0, call_axis=-1)).graph.node[0].attribute[0].i == -1
    assert "y" in row_mixing_outputs(model)
    assert row_mixing_outputs(_function_model(-1)) == {}
    assert row_mixing_outputs(_function_model(0, call_axis=1)) == {}


def test_an_output_declared_the_batchs_that_the_graph_makes_another_axis_is_refused() -> None:
    moved = _model([N("Transpose", ["x"], ["y"], perm=[1, 0])], [], y=["N", "K"])
    assert (
        "it is declared ['N', 'K'], its first axis the batch's, but the graph makes it [4, 'N']"
        in (row_mixing_outputs(moved)["y"])
    )
    back = [N("Transpose", ["x"], ["t"], perm=[1, 0]), N("Transpose", ["t"], ["y"], perm=[1, 0])]
    assert row_mixing_outputs(_model(back, [])) == {}
    declared = helper.make_tensor_value_info("y", F, ["N", 4])
    assert declared_batch_unmade(declared, ["unk__1", 4], {"N"}) is None  # a name the inference gave
    assert declared_batch_unmade(declared, [4, "unk__1"], {"N"}) is not None
    assert declared_batch_unmade(declared, ["N", 4], {"N"}) is None


def test_a_shape_reads_a_length_a_data_sized_op_of_the_batch_set() -> None:
    dims = {"x": ["N", 4], "sel": ["unk__0", 3], "picked": ["unk__0", 1], "nz": None, "other": ["unk__7", 3]}
    lengths = DataSizedLengths()
    lengths.see(N("NonMaxSuppression", ["x"], ["sel"]), True, dims.get)
    lengths.see(N("NonZero", ["x"], ["nz"]), True, dims.get)
    lengths.see(N("NonZero", ["x"], ["other"]), False, dims.get)  # not made from the batch's rows
    lengths.see(N("Softmax", ["x"], ["picked"]), True, dims.get)  # not data-sized
    why = lengths.read(N("Shape", ["picked"], ["s"]), dims.get)  # the name carried on by a Gather
    assert (
        why == f"the Shape node making 's' reads a length of 'picked' that {SEL} set from every row's values"
    )
    assert lengths.read(N("Size", ["sel"], ["s"]), dims.get) is not None
    assert lengths.read(N("Shape", ["nz"], ["s"]), dims.get) is not None  # no shape: the op's own output
    assert lengths.read(N("Shape", ["sel"], ["s"], start=1), dims.get) is None  # the 3 of [k, 3]
    assert lengths.read(N("Shape", ["other"], ["s"]), dims.get) is None
    assert lengths.read(N("Shape", ["x"], ["s"]), dims.get) is None
    assert lengths.read(N("Relu", ["sel"], ["s"]), dims.get) is None


def _nms(shape_start: int) -> onnx.ModelProto:
    nodes = [
        N("NonMaxSuppression", ["boxes", "scores", "keep"], ["sel"]),
        N("Shape", ["sel"], ["ss"], start=shape_start, end=shape_start + 1),
        N("Cast", ["ss"], ["k"], to=F),
        N("ReduceSum", ["scores", "axis2"], ["s"], keepdims=0),
        N("Add", ["s", "k"], ["y"]),
    ]
    inputs = [
        helper.make_tensor_value_info("boxes", F, ["N", 3, 4]),
        helper.make_tensor_value_info("scores", F, ["N", 1, 3]),
    ]
    return _model(nodes, [_ints("keep", [3]), _ints("axis2", [2])], opset=13, y=["N", 1], inputs=inputs)


def test_a_detection_count_over_the_batch_is_refused_and_the_triplets_width_is_not() -> None:
    why = row_mixing_outputs(_nms(0))["y"]
    assert why == f"the Shape node making 'ss' reads a length of 'sel' that {SEL} set from every row's values"
    assert row_mixing_outputs(_nms(1)) == {}  # the 3 of [k, 3]


def test_filled_dims_follow_an_ops_form() -> None:
    dims = {"x": ["N", 3, 8], "c": ["N", 3, 1], "l": None}
    values = {1: np.array([2])}
    assert (
        filled_dims(N("Split", ["x", "lens"], ["a", "b"], axis=-1), dims.get, _unknown)
        == [["N", 3, None]] * 2
    )
    assert filled_dims(N("Concat", ["x", "x"], ["y"], axis=1), dims.get, _unknown) == [["N", None, 8]]
    assert filled_dims(N("Transpose", ["x"], ["y"], perm=[2, 0, 1]), dims.get, _unknown) == [[8, "N", 3]]
    assert filled_dims(N("Transpose", ["x"], ["y"]), dims.get, _unknown) == [[8, 3, "N"]]
    assert filled_dims(N("Mul", ["x", "c"], ["y"]), dims.get, _unknown) == [["N", 3, 8]]
    assert filled_dims(N("Mul", ["x", "l"], ["y"]), dims.get, _unknown) == [None]
    assert filled_dims(N("Relu", ["x"], ["y"]), dims.get, _unknown) == [["N", 3, 8]]
    assert filled_dims(N("Slice", ["x", "s", "e", "ax"], ["y"]), dims.get, {3: np.array([2])}.get) == [
        ["N", 3, None]
    ]
    assert filled_dims(N("Slice", ["x", "s", "e", "ax"], ["y"]), dims.get, _unknown) == [
        None
    ]  # axes computed
    assert filled_dims(N("Unsqueeze", ["x", "ax"], ["y"]), dims.get, values.get) == [["N", 3, 1, 8]]
    assert filled_dims(N("Unsqueeze", ["x", "ax"], ["y"]), dims.get, _unknown) == [None]
    assert filled_dims(N("Softmax", ["x"], ["y"]), dims.get, _unknown) == [None]  # not read here


# A second tester's review (session 58), on 28ab7d2: a whole Slice after a Split by computed lengths
# filled its axis 0 as unknown and hid the batch (a Softmax over it batched, wrong, OK); a detection
# count read after a Reshape to [-1]; a Split by computed lengths before a Softmax, a LayerNorm or a
# MatMul refused (no shape for them); the batch broadcast against a constant's fixed length.
def _split_halves(after: list[onnx.NodeProto], width: int | str = 4) -> onnx.ModelProto:
    nodes = [
        N("Shape", ["x"], ["sx"]),
        N("Gather", ["sx", "one"], ["w"]),
        N("Div", ["w", "two0"], ["h"]),
        N("Unsqueeze", ["h", "zero1"], ["h1"]),
        N("Concat", ["h1", "h1"], ["lens"], axis=0),
        N("Split", ["x", "lens"], ["a", "b"], axis=1),
        *after,
    ]
    inits = [_ints("one", 1), _ints("two0", 2), _ints("zero1", [0]), _ints("z", [0]), _ints("big", [1 << 62])]
    x = [helper.make_tensor_value_info("x", F, ["N", width])]
    return _model(nodes, [*inits, _ints("ax0", [0]), _ints("ax1", [1])], opset=13, y=["N", 2], inputs=x)


def test_a_whole_slice_keeps_the_batch_where_a_fill_had_hidden_it() -> None:
    whole = N("Slice", ["a", "z", "big", "ax0"], ["c"])
    assert "y" in row_mixing_outputs(_split_halves([whole, N("Softmax", ["c"], ["y"], axis=0)]))
    assert row_mixing_outputs(_split_halves([whole, N("Softmax", ["c"], ["y"], axis=1)])) == {}
    dims = {"a": ["N", None]}
    values = {1: np.array([0]), 2: np.array([1 << 62]), 3: np.array([0])}
    assert filled_dims(whole, dims.get, values.get) == [["N", None]]
    cut = {**values, 2: np.array([1])}
    assert filled_dims(whole, dims.get, cut.get) == [[None, None]]


def test_ops_after_a_split_by_computed_lengths_are_read_with_the_shapes_seeded() -> None:
    # Each was refused at 28ab7d2 (no shape after the Split): rows are the requests' own.
    softmax = [N("Softmax", ["a"], ["s1"], axis=1), N("Softmax", ["s1"], ["y"], axis=1)]  # s1: onnx's
    assert row_mixing_outputs(_split_halves(softmax)) == {}
    norm = [
        N("Relu", ["a"], ["r"]),
        N("Softmax", ["r"], ["s"]),
        N("LayerNormalization", ["s", "g", "bb"], ["y"]),
    ]
    model = _split_halves(norm)
    model.opset_import[0].version = 17
    model.graph.initializer.extend([numpy_helper.from_array(np.ones(2, np.float32), n) for n in ("g", "bb")])
    assert row_mixing_outputs(model) == {}
    assert "y" in row_mixing_outputs(_split_halves([N("Softmax", ["a"], ["y"], axis=0)]))


def test_a_detection_count_read_after_a_reshape_is_refused() -> None:
    model = _nms(0)
    nodes = list(model.graph.node)
    reshape = N("Reshape", ["sel", "flat"], ["flat_sel"])
    nodes[1] = N("Shape", ["flat_sel"], ["ss"], start=0, end=1)
    model.graph.ClearField("node")
    model.graph.node.extend([nodes[0], reshape, *nodes[1:]])
    model.graph.initializer.append(_ints("flat", [-1]))
    assert "set from every row's values" in row_mixing_outputs(model)["y"]


def test_repeated_unsqueeze_axes_are_not_filled() -> None:
    dims = {"x": ["N", 4]}
    assert filled_dims(N("Unsqueeze", ["x", "ax"], ["y"]), dims.get, {1: np.array([0, 0])}.get) == [None]


def test_the_batch_broadcast_against_a_constants_fixed_length_is_refused() -> None:
    def add(table: np.ndarray) -> onnx.ModelProto:
        nodes = [
            N("Add", ["x", "t"], ["e"]),
            N("ReduceSum", ["e", "ax0"], ["s"], keepdims=1),
            N("Add", ["x", "s"], ["y"]),
        ]
        return _model(nodes, [numpy_helper.from_array(table, "t"), _ints("ax0", [0])], opset=13, y=["N", 4])

    why = row_mixing_outputs(add(np.ones((4, 1), np.float32)))["y"]
    assert "broadcasts axis 0 of 'x' ['N', 4] against a fixed length 4 of axis 0 of 't' [4, 1]" in why
    assert "ReduceSum" in row_mixing_outputs(add(np.ones((1, 4), np.float32)))["y"]  # the sum itself
    row = _model([N("Add", ["x", "t"], ["y"])], [numpy_helper.from_array(np.ones((1, 4), np.float32), "t")])
    assert row_mixing_outputs(row) == {}  # a row broadcast to every row


# A third tester's review (session 58), on 2755b63: the batch broadcast against a constant whose
# length onnx cannot tell, or in an Einsum's `...`; a detection count from inside an If; a q/k
# split four layers deep refused (the seeding stopped after three rounds); a Concat pinning the batch.
def test_the_batch_broadcast_against_a_constant_of_a_length_the_load_cannot_tell_is_refused() -> None:
    nodes = [
        N("Shape", ["big"], ["sb"]),
        N("Gather", ["sb", "zero0"], ["eight"]),
        N("Div", ["eight", "two0"], ["four"]),
        N("Unsqueeze", ["four", "zero1"], ["four1"]),
        N("Slice", ["big", "zero1", "four1", "zero1"], ["t"]),  # [4, 1], its length computed
        N("Add", ["x", "t"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.ones((8, 1), np.float32), "big")]
    inits += [_ints("zero0", 0), _ints("two0", 2), _ints("zero1", [0])]
    why = row_mixing_outputs(_model(nodes, inits))["y"]
    assert "against a length the load cannot tell of axis 0 of 't'" in why


def test_the_batch_in_an_einsums_ellipsis_broadcast_against_another_is_refused() -> None:
    def einsum(table: np.ndarray) -> onnx.ModelProto:
        node = N("Einsum", ["x", "t"], ["y"], equation="...j,...j->...j")
        return _model([node], [numpy_helper.from_array(table, "t")], opset=12)

    assert (
        "against a fixed length 4 of axis 0 of 't' [4, 4]"
        in row_mixing_outputs(einsum(np.ones((4, 4), np.float32)))["y"]
    )
    assert row_mixing_outputs(einsum(np.ones((1, 4), np.float32))) == {}


def test_a_detection_count_returned_by_an_if_is_refused() -> None:
    nms = N("NonMaxSuppression", ["boxes", "scores", "keep"], ["inner"])
    branch = helper.make_graph(
        [nms], "b", [], [helper.make_tensor_value_info("inner", TensorProto.INT64, None)]
    )
    model = _nms(0)
    nodes = list(model.graph.node)
    nodes[0] = N("If", ["cond"], ["sel"], then_branch=branch, else_branch=branch)
    model.graph.ClearField("node")
    model.graph.node.extend(nodes)
    model.graph.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
    assert (
        "that the NonMaxSuppression node making 'inner' set from every row's values"
        in row_mixing_outputs(model)["y"]
    )


def test_a_split_by_computed_lengths_is_read_at_any_depth() -> None:
    nodes: list[onnx.NodeProto] = []
    last = "x"
    for layer in range(6):  # q, k split by lengths read from the shape; softmax(q k^T) @ x, 6 deep
        p = f"l{layer}_"
        nodes += [
            N("Shape", [last], [p + "s"]),
            N("Gather", [p + "s", "two0"], [p + "w"]),
            N("Div", [p + "w", "two0"], [p + "h"]),
            N("Unsqueeze", [p + "h", "zero1"], [p + "u"]),
            N("Concat", [p + "u", p + "u"], [p + "lens"], axis=0),
            N("Split", [last, p + "lens"], [p + "q", p + "k"], axis=-1),
            N("Transpose", [p + "k"], [p + "kt"], perm=[0, 2, 1]),
            N("MatMul", [p + "q", p + "kt"], [p + "sc"]),
            N("Softmax", [p + "sc"], [p + "pr"], axis=-1),
            N("MatMul", [p + "pr", last], [p + "o"]),
        ]
        last = p + "o"
    nodes.append(N("Identity", [last], ["y"]))
    x = [helper.make_tensor_value_info("x", F, ["N", 5, 8])]
    model = _model(nodes, [_ints("two0", 2), _ints("zero1", [0])], opset=17, y=["N", 5, 8], inputs=x)
    assert row_mixing_outputs(model) == {}  # a fourth layer was refused at 2755b63


def test_a_concat_pinning_the_batch_to_a_fixed_length_is_refused() -> None:
    model = _model(
        [N("Concat", ["c", "x"], ["y"], axis=1)], [numpy_helper.from_array(np.ones((1, 2), np.float32), "c")]
    )
    assert (
        "joins axis 0 of 'x' ['N', 4] to axis 0 of 'c' [1, 2], which is not the batch's"
        in row_mixing_outputs(model)["y"]
    )


# A fourth tester's review (session 58), on f1d33cc: the unknown-shape refusal, read in the main
# graph only, let an Unsqueeze at a computed axis inside an If branch through; a Reshape of a split
# half [N, ?] to [-1, 1] folded the batch with a length no one knew, read as keeping rows.
def _branch(nodes: list[onnx.NodeProto], out: str) -> onnx.GraphProto:
    return helper.make_graph(nodes, "branch", [], [helper.make_tensor_value_info(out, F, None)])


def _softmax_in_a_branch(before: list[onnx.NodeProto], inside: list[onnx.NodeProto]) -> onnx.ModelProto:
    """`before`, then an If whose then branch runs `inside` (making 't'), the other x as it is; its
    condition 'yes' a client sends (a constant one's If is replaced by its branch: session 65)."""
    kept = _branch([N("Identity", ["x"], ["e"])], "e")
    nodes = [*before, N("If", ["yes"], ["y"], then_branch=_branch(inside, "t"), else_branch=kept)]
    inputs = [
        helper.make_tensor_value_info("x", F, ["N", 4]),
        helper.make_tensor_value_info("yes", TensorProto.BOOL, []),
    ]
    return _model(nodes, [TWO], opset=13, inputs=inputs)


def test_an_unsqueeze_at_a_computed_axis_inside_a_branch_is_refused() -> None:
    inside = [
        N("Unsqueeze", ["x", "ax"], ["u"]),
        N("Softmax", ["u"], ["s"], axis=1),
        N("Squeeze", ["s", "ax"], ["t"]),
    ]
    # The main graph's rank - 2 is read at load (session 62): the branch's Softmax is along the batch.
    said = row_mixing_outputs(_softmax_in_a_branch(RANK_MINUS_2, inside))["y"]
    assert "works along the batch's axis, axis 1 of 'u' [1, 'N', 4], inside the If" in said


def test_a_rank_inside_a_loop_body_is_not_read_at_load() -> None:
    # A Loop's carried value may change by turns: a Loop body's ranks stay computed, and the same
    # rank - 2 made inside it leaves the Unsqueeze's output of no known shape (a scan output here).
    inside = [
        N("Identity", ["cond"], ["cond_out"]),
        *RANK_MINUS_2,
        N("Unsqueeze", ["x", "ax"], ["u"]),
        N("Softmax", ["u"], ["s"], axis=1),
        N("Squeeze", ["s", "ax"], ["t"]),
    ]
    body = helper.make_graph(
        inside,
        "body",
        [
            helper.make_tensor_value_info("turn", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("t", F, None),
        ],
    )
    nodes = [N("Loop", ["turns", "yes"], ["stacked"], body=body), N("Squeeze", ["stacked", "zero"], ["y"])]
    inits = [TWO, _ints("turns", 1), numpy_helper.from_array(np.array(True), "yes"), _ints("zero", [0])]
    assert "its shape is not known" in row_mixing_outputs(_model(nodes, inits, opset=13))["y"]


def test_a_rank_inside_an_if_branch_is_read_at_load() -> None:
    # An If's branch runs once: its rank - 2 is read, and the Softmax is named along the batch's axis
    # (the rank LayerNorm in a branch had been refused, rows independent: a tester, session 62).
    inside = [
        *RANK_MINUS_2,
        N("Unsqueeze", ["x", "ax"], ["u"]),
        N("Softmax", ["u"], ["s"], axis=1),
        N("Squeeze", ["s", "ax"], ["t"]),
    ]
    said = row_mixing_outputs(_softmax_in_a_branch([], inside))["y"]
    assert "works along the batch's axis, axis 1 of 'u' [1, 'N', 4], inside the If" in said


def test_an_ifs_output_of_two_ranks_is_read_as_before_inside_a_body() -> None:
    # Silero VAD's nested Ifs return [1, d, 128] or [d, 128]: no shape; an Unsqueeze at a constant
    # axis and a per-row op after it are not refused (tests/integration/test_vad.py serves it).
    squeezed = _branch([N("Squeeze", ["x", "zero1"], ["q"])], "q")
    kept = _branch([N("Identity", ["x"], ["k"])], "k")
    inner = [
        N("If", ["yes"], ["either"], then_branch=squeezed, else_branch=kept),
        N("Unsqueeze", ["either", "zero1"], ["u"]),
        N("Relu", ["u"], ["r"]),
        N("Squeeze", ["r", "zero1"], ["t"]),
    ]
    outer = N("If", ["yes"], ["y"], then_branch=_branch(inner, "t"), else_branch=kept)
    model = _model([outer], [numpy_helper.from_array(np.array(True), "yes"), _ints("zero1", [0])], opset=13)
    assert row_mixing_outputs(model) == {}


def test_a_reshape_folding_the_batch_with_a_length_no_one_knows_is_refused() -> None:
    fold = [
        N("Reshape", ["a", "m1"], ["r"]),
        N("Softmax", ["r"], ["s"], axis=0),
        N("Reshape", ["s", "back"], ["y"]),
    ]
    extra = [_ints("m1", [-1, 1]), _ints("back", [-1, 2])]
    # [N, ?] viewed as [-1, 1]: where the rows go depends on a length no one knows.
    assert isinstance(reshaped_rows(["N", None], ["unk__9", 1], {"N"}, {}), Moved)
    model = _split_halves(fold, width="W")  # halves of W / 2 columns, named by onnx: a fold of N
    model.graph.initializer.extend(extra)
    assert "works along the batch's axis, axis 0 of 'r' ['N*unk__0', 1]" in row_mixing_outputs(model)["y"]
    # Of x's fixed 4 columns the halves are 2 wide, computed at load since session 67
    # (onnx_fixed_lengths.py): the fold is [N*2, 1], and the Softmax along it is named.
    model = _split_halves(fold)
    model.graph.initializer.extend(extra)
    assert "works along the batch's axis, axis 0 of 'r' ['N*2', 1]" in row_mixing_outputs(model)["y"]


def test_table_mixing_at_its_edges() -> None:
    """Mutants of onnx_table_reads.py that survived (session 58): one input, inputs that carry no
    batch, the default axis, a negative axis, a rank-1 lookup, a table of no known shape."""
    dims = {"x": ["N", 4], "tab": [8, 4], "i": [4, 1], "u": [4, 1], "ie": ["N", 4], "col": [4, "N"]}
    dims |= {"t4": [4, 8], "t1": [8], "i1": ["N"], "nd": ["N", 1]}
    batch = {"N"}
    assert table_mixing(N("GatherElements", ["tab"], ["g"]), dims.get, batch) is None
    assert table_mixing(N("ScatterElements", ["tab", "i", "u"], ["t"], axis=1), dims.get, batch) is None
    why = table_mixing(N("ScatterND", ["tab", "ie", "x"], ["t"]), dims.get, batch)
    wrote = "the ScatterND node making 't' writes every row of the batch ('ie') into 'tab'"
    assert why == f"{wrote}, which does not carry the batch"
    assert (
        table_mixing(N("GatherElements", ["tab", "ie"], ["g"]), dims.get, batch) is None
    )  # axis 0: a lookup
    assert table_mixing(N("GatherElements", ["t4", "col"], ["g"], axis=-1), dims.get, batch) is None
    assert table_mixing(N("GatherElements", ["t1", "i1"], ["g"], axis=-1), dims.get, batch) is None
    why = table_mixing(N("GatherND", ["nodims", "nd"], ["g"], batch_dims=1), dims.get, batch)
    assert why is not None and "answers the batch's row i of 'nd' with row i of 'nodims' (axis 0)" in why
