"""What two testers of session 51 found in the reading of reshapes, folds and the batch's size
(server/backends/onnx_reshape_rows.py, onnx_batch_names.py, onnx_batch_size_value.py,
onnx_row_positions.py). Each model here loaded batched and answered wrong with status OK on a
real server (or, for the per-row ones, was refused) before the fix that this file tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from server.backends.onnx_row_mixing import row_mixing_outputs
from tests.support.onnx_graphs import graph_model
from tests.support.onnx_graphs import ints as _ints
from tests.support.onnx_graphs import node as _node

F, I64 = TensorProto.FLOAT, TensorProto.INT64


def _model(
    nodes: Sequence[onnx.NodeProto],
    inits: Sequence[onnx.TensorProto] = (),
    inputs: Sequence[onnx.ValueInfoProto] = (),
    shape: Sequence[int | str | None] = ("N", 4),
    output: str = "y",
) -> onnx.ModelProto:
    return graph_model(nodes, inits, inputs=inputs, shape=shape, output=output)


def _back(source: str) -> list[onnx.NodeProto]:
    """Reshaped back to x's own shape, as the output."""
    return [_node("Shape", ["x"], "xs"), _node("Reshape", [source, "xs"], "y")]


def _flat_pick(offset: Sequence[onnx.NodeProto], index_from: str = "off") -> list[onnx.NodeProto]:
    """flatten(x)[arange(N)[:, None] * 4 + offsets] for x [N, 4]: `offset` makes 'off'."""
    return [
        _node("Reshape", ["x", "flat"], "f"),
        _node("Shape", ["x"], "s"),
        _node("Gather", ["s", "zero"], "n", axis=0),
        _node("Range", ["zero", "n", "one"], "rows"),
        _node("Unsqueeze", ["rows", "axis1"], "column"),
        _node("Mul", ["column", "four"], "starts"),
        *offset,
        _node("Add", ["starts", index_from], "at"),
        _node("Gather", ["f", "at"], "y", axis=0),
    ]


_PICK = [_ints("flat", [-1]), _ints("zero", 0), _ints("one", 1), _ints("axis1", [1]), _ints("four", 4)]


def test_offsets_a_client_may_send_are_not_read_as_constants() -> None:
    # flatten(x)[arange(N)[:, None] * 4 + off], `off` an initializer the config lists as an input:
    # a client sent off = [4..7] and read the next request's row (G1, HIGH).
    off = helper.make_tensor_value_info("off", I64, ["N", 4])
    x = helper.make_tensor_value_info("x", F, ["N", 4])
    model = _model(_flat_pick([]), [*_PICK, _ints("off", [[3, 2, 1, 0]])], inputs=[x, off])
    assert row_mixing_outputs(model) == {}  # the initializer's own offsets stay in the row
    assert "Gather" in row_mixing_outputs(model, fed={"off"})["y"]


def test_a_reshape_whose_output_onnx_leaves_unnamed_is_worked_out() -> None:
    # x.t().contiguous().view(-1, 4): [4, N] -> [?, 4], ? = N (G2).
    moved = [_node("Transpose", ["x"], "t", perm=[1, 0]), _node("Reshape", ["t", "shape"], "y")]
    assert (
        "moves values between the batch's rows"
        in row_mixing_outputs(_model(moved, [_ints("shape", [-1, 4])]))["y"]
    )
    # x.reshape(2, -1).flip(0).reshape(x.shape): the batch spread over [2, 2N].
    spread = [_node("Reshape", ["x", "two"], "h"), _node("Neg", ["h"], "n"), *_back("n")]
    got = row_mixing_outputs(_model(spread, [_ints("two", [2, -1])]))["y"]
    assert "the batch's rows spread over its output's axes" in got, got
    # Rows of 6 cut in 4s: some pieces hold two requests' values, whatever the batch.
    cut = [_node("Reshape", ["x", "fours"], "h"), _node("Softmax", ["h"], "s", axis=-1), *_back("s")]
    assert row_mixing_outputs(_model(cut, [_ints("fours", [-1, 4])], shape=("N", 6)))


def test_a_fold_keeps_its_name_through_ops_that_rename_it() -> None:
    # Tile by 1, a whole Slice: onnx's inference makes up a new name; a Softmax along it mixes (G3).
    fold = [_node("Reshape", ["x", "flat"], "f")]
    tiled = [*fold, _node("Tile", ["f", "once"], "t"), _node("Softmax", ["t"], "s", axis=0), *_back("s")]
    assert "Softmax" in row_mixing_outputs(_model(tiled, [_ints("flat", [-1]), _ints("once", [1])]))["y"]
    plain = [_node("Tile", ["x", "ones"], "t"), _node("Softmax", ["t"], "y", axis=0)]
    assert "Softmax" in row_mixing_outputs(_model(plain, [_ints("ones", [1, 1])]))["y"]


def test_a_fold_made_inside_an_if_is_followed_after_it() -> None:
    branch = helper.make_graph(
        [_node("Reshape", ["x", "flat"], "inner")], "b", [], [helper.make_tensor_value_info("inner", F, None)]
    )
    nodes = [
        _node("If", ["cond"], "f", then_branch=branch, else_branch=branch),
        _node("CumSum", ["f", "zero"], "c"),
        *_back("c"),
    ]
    inits = [numpy_helper.from_array(np.array(True), "cond"), _ints("flat", [-1]), _ints("zero", 0)]
    assert "CumSum" in row_mixing_outputs(_model(nodes, inits))["y"]


def _size_as(op: str, extra: Sequence[onnx.NodeProto] = ()) -> list[onnx.NodeProto]:
    return [
        _node("Shape", ["x"], "s"),
        _node("Gather", ["s", "zero"], "n", axis=0),
        _node("Range", ["zero", "n", "one"], "rows"),
        *extra,
    ]


def test_each_rows_place_taken_as_a_value_by_any_op_mixes() -> None:
    inits = [_ints("zero", 0), _ints("one", 1), _ints("axis1", [1])]
    table = numpy_helper.from_array(np.arange(40, dtype=np.float32).reshape(10, 4), "table")
    picked = _size_as("", [_node("Gather", ["table", "rows"], "p", axis=0), _node("Add", ["x", "p"], "y")])
    assert "takes the batch's size as a value" in row_mixing_outputs(_model(picked, [*inits, table]))["y"]
    first = _size_as(
        "",
        [
            _node("Equal", ["rows", "zero"], "is_first"),
            _node("Unsqueeze", ["is_first", "axis1"], "mask"),
            _node("Where", ["mask", "x", "zeros"], "y"),
        ],
    )
    zeros = numpy_helper.from_array(np.zeros(1, np.float32), "zeros")
    assert "Where" in row_mixing_outputs(_model(first, [*inits, zeros]))["y"]
    tokens = helper.make_tensor_value_info("x", I64, ["N", 4])
    ints = _size_as("", [_node("Unsqueeze", ["rows", "axis1"], "c"), _node("Add", ["x", "c"], "y")])
    assert "Add" in row_mixing_outputs(_model(ints, inits, inputs=[tokens]))["y"]  # int data too


def test_an_if_on_the_batchs_size_mixes_and_a_shape_made_from_it_does_not() -> None:
    then = helper.make_graph(
        [_node("Neg", ["x"], "a")], "t", [], [helper.make_tensor_value_info("a", F, None)]
    )
    other = helper.make_graph(
        [_node("Abs", ["x"], "b")], "e", [], [helper.make_tensor_value_info("b", F, None)]
    )
    nodes = [
        _node("Shape", ["x"], "s"),
        _node("Gather", ["s", "zero"], "n", axis=0),
        _node("Greater", ["n", "one"], "many"),
        _node("If", ["many"], "y", then_branch=then, else_branch=other),
    ]
    got = row_mixing_outputs(_model(nodes, [_ints("zero", 0), _ints("one", 1)]))["y"]
    assert "chooses its branch by the batch's size" in got, got
    filled = [
        _node("Shape", ["x"], "s"),
        _node("ConstantOfShape", ["s"], "z", value=numpy_helper.from_array(np.ones(1, np.float32))),
        _node("Expand", ["x", "s"], "e"),
        _node("Add", ["e", "z"], "y"),
    ]
    assert row_mixing_outputs(_model(filled)) == {}


def test_a_range_over_a_folds_length_is_not_each_rows_place() -> None:
    # arange(4N) taken for arange(N) had vouched for a Gather (G7).
    nodes = [
        _node("Reshape", ["x", "flat"], "f"),
        _node("Shape", ["f"], "s"),
        _node("Gather", ["s", "zero"], "n", axis=0),
        _node("Range", ["zero", "n", "one"], "rows"),
        _node("Gather", ["x", "rows"], "y", axis=0),
    ]
    assert row_mixing_outputs(_model(nodes, [_ints("flat", [-1]), _ints("zero", 0), _ints("one", 1)]))


def _last_token(offsets: Sequence[onnx.NodeProto], inits: Sequence[onnx.TensorProto] = ()) -> onnx.ModelProto:
    """h[arange(N), idx] as torch's legacy exporter writes it: a Gather from h flattened to
    [N*T, C] at arange(N) * T + idx, h the embeddings of 'ids' [N, T]; `offsets` make 'idx' from
    'ids'."""
    ids = helper.make_tensor_value_info("ids", I64, ["N", "T"])
    table = numpy_helper.from_array(np.ones((50, 8), np.float32), "table")
    nodes = [
        _node("Gather", ["table", "ids"], "h", axis=0),
        *offsets,
        _node("Shape", ["h"], "s"),
        _node("Gather", ["s", "zero"], "n", axis=0),
        _node("Range", ["zero", "n", "one"], "rows"),
        _node("Gather", ["s", "at1"], "t", axis=0),
        _node("Mul", ["rows", "t"], "starts"),
        _node("Add", ["idx", "starts"], "at"),
        _node("Flatten", ["h"], "tokens", axis=2),
        _node("Gather", ["tokens", "at"], "y", axis=0),
    ]
    given = [_ints("zero", 0), _ints("one", 1), _ints("at1", [1]), table, *inits]
    return _model(nodes, given, inputs=[ids])


def test_a_per_row_pick_from_the_flattened_tokens_is_batched_when_its_index_stays_in_the_row() -> None:
    argmax = [_node("ArgMax", ["ids"], "idx", axis=-1, keepdims=0)]  # CLIP's end-of-text token
    assert row_mixing_outputs(_last_token(argmax)) == {}
    gpt2 = [
        _node("ArgMax", ["ids"], "last", axis=-1, keepdims=0),
        _node("Sub", ["last", "one"], "before"),
        _node("Shape", ["ids"], "is"),
        _node("Gather", ["is", "one"], "steps", axis=0),
        _node("Mod", ["before", "steps"], "idx"),  # GPT-2's sequence classification
    ]
    assert row_mixing_outputs(_last_token(gpt2)) == {}
    # Without the Mod, ArgMax - 1 may be -1: the previous row's last token.
    assert row_mixing_outputs(_last_token([*gpt2[:2], _node("Identity", ["before"], "idx")]))
    # A length the client sends: refused (it reached the next request's state).
    lengths = [
        _node("ReduceSum", ["ids", "axis1"], "count", keepdims=0),
        _node("Sub", ["count", "one"], "idx"),
    ]
    assert row_mixing_outputs(_last_token(lengths, [_ints("axis1", [1])]))


def test_dynamos_expression_names_are_not_taken_for_one_size() -> None:
    # dynamo names a fold of (batch, heads) and one of (steps, batch) both '4*batch'.
    x = helper.make_tensor_value_info("x", F, [4, "batch", 16])
    heads = helper.make_tensor_value_info("heads", F, [4, "4*batch", 4])
    back = helper.make_tensor_value_info("back", F, [4, "4*batch", 4])
    flat = helper.make_tensor_value_info("flat", F, ["4*batch", 16])
    nodes = [
        _node("Reshape", ["x", "split"], "heads"),  # [T, N, 16] -> [T, N*4, 4]
        _node("Relu", ["heads"], "back"),
        _node("Reshape", ["back", "joined"], "flat"),  # -> [T*N, 16]
        _node("Reshape", ["flat", "again"], "y"),  # -> [T, N, 16]
    ]
    inits = [_ints("split", [4, -1, 4]), _ints("joined", [-1, 16]), _ints("again", [4, -1, 16])]
    model = _model(nodes, inits, inputs=[x])
    model.graph.value_info.extend([heads, back, flat])
    assert row_mixing_outputs(model) == {}


def test_an_output_whose_first_axis_is_a_fold_of_the_batch_is_not_split_by_rows() -> None:
    got = row_mixing_outputs(_model([_node("Reshape", ["x", "flat"], "y")], [_ints("flat", [-1])]))
    assert got["y"].startswith("its first axis ['N*4'] is the batch's axis folded with other values")
    one = [_node("Reshape", ["x", "rows"], "y")]
    assert row_mixing_outputs(_model(one, [_ints("rows", [-1, 4])])) == {}  # [N, 4] as it was


# --- round two (tester I, at a5e946a): the acceptance rules attacked ---


def test_a_bound_cast_to_a_narrow_int_or_broadcast_across_rows_is_no_proof() -> None:
    argmax = [_node("ArgMax", ["x"], "am", axis=1, keepdims=1)]  # [N, 1] in [0, 4)
    assert row_mixing_outputs(_model(_flat_pick(argmax, "am"), _PICK)) == {}
    narrow = [*argmax, _node("Cast", ["am"], "off", to=TensorProto.INT8)]
    assert row_mixing_outputs(_model(_flat_pick(narrow), _PICK))  # int8 wraps negative
    flat = [_node("ArgMax", ["x"], "off", axis=1, keepdims=0)]  # [N] beside [N, 1]: [N, N]
    assert row_mixing_outputs(_model(_flat_pick(flat), _PICK))


def test_a_bound_read_from_another_inputs_steps_is_no_proof() -> None:
    # h's T and mask's T share a declared name, but a client may send mask wider.
    mask = helper.make_tensor_value_info("mask", F, ["N", "T"])
    x = helper.make_tensor_value_info("x", F, ["N", "T"])
    nodes = [
        _node("ArgMax", ["mask"], "am", axis=1, keepdims=1),
        _node("Reshape", ["x", "flat"], "f"),
        _node("Shape", ["x"], "s"),
        _node("Gather", ["s", "zero"], "n", axis=0),
        _node("Range", ["zero", "n", "one"], "rows"),
        _node("Unsqueeze", ["rows", "axis1"], "column"),
        _node("Gather", ["s", "at1"], "t", axis=0),
        _node("Mul", ["column", "t"], "starts"),
        _node("Add", ["starts", "am"], "at"),
        _node("Gather", ["f", "at"], "y", axis=0),
    ]
    inits = [_ints("flat", [-1]), _ints("zero", 0), _ints("one", 1), _ints("axis1", [1]), _ints("at1", [1])]
    assert "Gather" in row_mixing_outputs(_model(nodes, inits, inputs=[x, mask]))["y"]
    own = [_node("ArgMax", ["x"], "am", axis=1, keepdims=1), *nodes[1:]]
    assert row_mixing_outputs(_model(own, inits, inputs=[x, mask])) == {}


def test_the_rows_of_an_own_row_pick_are_the_batchs() -> None:
    picked = [*_flat_pick([], "zero"), _node("Softmax", ["y"], "s", axis=0)]
    nodes = [n for n in picked if n.output[0] != "y"] + [_node("Gather", ["f", "at"], "g", axis=0)]
    nodes.append(_node("Softmax", ["g"], "y", axis=0))
    assert "Softmax" in row_mixing_outputs(_model(nodes, _PICK))["y"]


def test_a_gather_nd_whose_columns_all_hold_the_row_is_no_own_row_pick() -> None:
    nodes = [
        _node("Shape", ["x"], "s"),
        _node("Gather", ["s", "zero"], "n", axis=0),
        _node("Range", ["zero", "n", "one"], "rows"),
        _node("Unsqueeze", ["rows", "axis1"], "column"),
        _node("Add", ["column", "pair"], "both"),  # [N, 2]: (i, i)
        _node("Concat", ["both"], "ix", axis=1),
        _node("GatherND", ["x", "ix"], "y"),
    ]
    inits = [_ints("zero", 0), _ints("one", 1), _ints("axis1", [1]), _ints("pair", [[0, 0]])]
    assert row_mixing_outputs(_model(nodes, inits, shape=("N", 8)))


def test_values_made_from_the_batchs_size_that_are_an_output_mix() -> None:
    place = [
        _node("Shape", ["x"], "s"),
        _node("Gather", ["s", "zero"], "n", axis=0),
        _node("Range", ["zero", "n", "one"], "y"),
    ]
    got = row_mixing_outputs(_model(place, [_ints("zero", 0), _ints("one", 1)]))["y"]
    assert got.startswith("its values are made from the batch's size by the Shape node making 's'"), got


def test_pads_and_repeats_computed_at_run_time_may_add_rows() -> None:
    # pads [x.shape[1] // 4, 0, 0, 0]: the batch's first pad computed.
    computed = [
        _node("Shape", ["x"], "s"),
        _node("Gather", ["s", "at1"], "w", axis=0),
        _node("Div", ["w", "four"], "q"),
        _node("Concat", ["q", "zeros3"], "pads", axis=0),
        _node("Pad", ["x", "pads"], "y"),
    ]
    inits = [_ints("at1", [1]), _ints("four", [4]), _ints("zeros3", [0, 0, 0])]
    wide = ("N", "W")  # W // 4 is not known at load
    assert (
        "may add rows to the batch's axis 0" in row_mixing_outputs(_model(computed, inits, shape=wide))["y"]
    )
    # Swin's: the batch's pads written as 0, the others computed: kept.
    swin = [*computed[:3], _node("Concat", ["zeros3", "q"], "pads", axis=0), computed[4]]
    assert row_mixing_outputs(_model(swin, inits, shape=wide)) == {}
    # With x [N, 4] the pads work out at load as [1, 0, 0, 0]: a row added, read as such.
    assert row_mixing_outputs(_model(computed, inits, shape=("N", 4)))
    tiled = [*computed[:3], _node("Concat", ["q", "one"], "reps", axis=0), _node("Tile", ["x", "reps"], "y")]
    assert "may add rows" in row_mixing_outputs(_model(tiled, [*inits, _ints("one", [1])], shape=wide))["y"]


def test_an_expand_that_copies_the_batch_along_another_axis_mixes() -> None:
    nodes = [
        _node("Unsqueeze", ["x", "axis0"], "u"),  # [1, N, 4]
        _node("Shape", ["x"], "s"),
        _node("Slice", ["s", "zero", "one"], "n"),
        _node("Concat", ["n", "s"], "target", axis=0),  # [N, N, 4]
        _node("Expand", ["u", "target"], "e"),
        _node("Shape", ["x"], "xs"),
        _node("Reshape", ["e", "rows"], "y"),
    ]
    inits = [_ints("axis0", [0]), _ints("zero", [0]), _ints("one", [1]), _ints("rows", [0, -1])]
    why = row_mixing_outputs(_model(nodes, inits))["y"]  # its shape holds the size on axis 1 too
    assert why.startswith("the Expand node making 'e' takes 'target', made from the batch's size"), why


def test_an_if_names_the_batch_only_where_every_branch_returns_it() -> None:
    table = numpy_helper.from_array(np.ones((8, 4), np.float32), "table")
    then = helper.make_graph(
        [_node("Identity", ["x"], "a")], "t", [], [helper.make_tensor_value_info("a", F, None)]
    )
    other = helper.make_graph(
        [_node("Identity", ["table"], "b")], "e", [], [helper.make_tensor_value_info("b", F, None)]
    )
    nodes = [
        _node("If", ["cond"], "f", then_branch=then, else_branch=other),
        _node("Shape", ["x"], "s"),
        _node("Gather", ["s", "zero"], "n", axis=0),
        _node("Range", ["zero", "n", "one"], "rows"),
        _node("Gather", ["f", "rows"], "g", axis=0),  # table[arange(N)] when the table is taken
        _node("Add", ["g", "x"], "y"),
    ]
    inits = [numpy_helper.from_array(np.array(False), "cond"), table, _ints("zero", 0), _ints("one", 1)]
    assert row_mixing_outputs(_model(nodes, inits))
