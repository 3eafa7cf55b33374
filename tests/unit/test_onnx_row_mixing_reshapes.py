"""Reshapes that move or fold the batch's rows (server/backends/onnx_reshape_rows.py) and the batch's
size read as a value (onnx_batch_size_value.py). Testers of session 50 exported from torch
x.t().reshape(x.shape), x.reshape(1, -1).softmax(-1), x / x.shape[0] and x + arange(N): each
loaded batched and answered OK with values from batch mates. Session 51."""

from __future__ import annotations

from collections.abc import Sequence

import onnx
import pytest
from onnx import TensorProto, helper

from server.backends.onnx_reshape_rows import Folded, Moved, reshaped_rows, spelled_out
from server.backends.onnx_row_mixing import row_mixing_outputs
from tests.support.onnx_graphs import graph_model
from tests.support.onnx_graphs import ints as _ints
from tests.support.onnx_graphs import node as _node

F = TensorProto.FLOAT


def _model(
    nodes: Sequence[onnx.NodeProto],
    inits: Sequence[onnx.TensorProto] = (),
    shape: Sequence[int | str | None] = (None, 3),
    inputs: Sequence[onnx.ValueInfoProto] = (),
) -> onnx.ModelProto:
    return graph_model(nodes, inits, shape=shape, inputs=inputs)


# --- the reshape's reading, on dims ---


@pytest.mark.parametrize(
    ("before", "after", "found"),
    [
        (["N", 3], ["N", 3], None),
        (["N", "S", 768], ["N", "S", 12, 64], None),
        ([1, "N", 3], ["N", 3], None),  # a unit axis ahead moves nothing
        ([3, "N"], ["N", 3], Moved(1, 0, "[3]", "[]")),  # x.t().reshape(x.shape)
        ([2, "N", 6], [4, "N", 3], Moved(1, 1, "[2]", "[4]")),  # 2 values ahead become 4
        ([4, "N"], ["f", 4], Moved(1, 0, "[4]", "[]")),  # x.t().view(-1, 4): f works out as N
        (["N", 4], [2, "f"], Moved(0, None, "[]", "[2, 'f']")),  # x.reshape(2, -1): spread
        (["N", 4], [2, None], Moved(0, None, "[]", "[2, '?']")),  # the same, onnx naming nothing
        (["seq", "N", 12], [5, "N", 12], None),  # a fixed length for a symbol: no proof
        ([None, "N"], ["N", 3], None),  # an unknown dim ahead: no proof
        (["N", "T", 3], ["f", 3], Folded(0, "f", ("N", 1, "T"))),
        (["T", "N", 3], ["f", 3], Folded(0, "f", ("T", "N", 1))),  # interleaved, still carried
        (["N", 3], [1, "f"], Folded(1, "f", ("N", 3))),  # Flatten(axis=0)
        (["N", "S", 768], ["f", 12, 64], Folded(0, "f", ("N", 1, "S"))),  # view(-1, 12, 64)
        (["N", 8, 7, 8], ["f", 7], Folded(0, "f", ("N", 64))),  # window partition: 64 a row
        (["T", "N", 8], ["f", 4], Folded(0, "f", ("T", "N", 2))),
        (["N", 6], ["f", 4], Moved(0, None, "[]", "['f', 4]")),  # rows of 6 cut in 4s: straddles
        (["N", "T"], ["f", 4], None),  # T may be a multiple of 4: no proof
        (["N", "T"], ["T", "N"], Moved(0, 1, "[]", "['T']")),  # T ahead where nothing was: T > 1 moves
        (["T", "N", 4], ["N", "f"], Moved(1, 0, "['T']", "[]")),  # seq-first viewed [N, -1] (s52)
        (["N", "T", 3], ["f", "g"], None),  # two dims unknown (onnx_batch_size_value.py's `unread`)
        ([3, 4], [12], None),  # no batch
    ],
)
def test_a_reshape_keeps_moves_or_folds_the_batchs_rows(
    before: list[int | str | None], after: list[int | str | None], found: object
) -> None:
    assert reshaped_rows(before, after, {"N"}, {}) == found


def test_a_fold_is_spelled_out_when_read_again() -> None:
    folds = {"f": ["T", "N"], "g": ["f", 2]}
    assert spelled_out(["g", 3], folds) == ["T", "N", 2, 3]
    # [T*N, C] -> [T, N, C] undoes the time-major fold; [T*N, C] -> [N, T, C] moves rows.
    assert reshaped_rows(["f", 3], ["T", "N", 3], {"N", "f"}, folds) is None
    assert reshaped_rows(["f", 3], [2, "N", 3], {"N", "f"}, {"f": [4, "N"]}) == Moved(1, 1, "[4]", "[2]")


def test_folds_that_name_each_other_are_spelled_out_a_bounded_depth() -> None:
    cycle = {"a": ["b"], "b": ["a"]}
    assert len(spelled_out(["a"], cycle)) == 1


# --- in a graph ---


def test_a_transpose_reshaped_to_the_inputs_shape_moves_rows() -> None:
    nodes = [
        _node("Transpose", ["x"], "t", perm=[1, 0]),
        _node("Shape", ["x"], "s"),
        _node("Reshape", ["t", "s"], "y"),
    ]
    assert row_mixing_outputs(_model(nodes)) == {
        "y": "the Reshape node making 'y' moves values between the batch's rows: it reshapes 't' "
        "[3, 'batch'] to ['batch', 3], the batch's axis 1 with [3] ahead of it becoming axis 0 with [] "
        "ahead of it"
    }


def test_a_softmax_along_a_fold_of_the_batch_mixes_and_says_so() -> None:
    nodes = [_node("Flatten", ["x"], "f", axis=0), _node("Softmax", ["f"], "y", axis=-1)]
    got = row_mixing_outputs(_model(nodes))["y"]
    assert got == (
        "the Softmax node making 'y' works along the batch's axis, axis 1 of 'f' [1, 'batch*3'] (the "
        "batch's axis folded into it by the Flatten node making 'f')"
    )
    per_row = [_node("Flatten", ["x"], "f", axis=1), _node("Softmax", ["f"], "y", axis=-1)]
    assert row_mixing_outputs(_model(per_row)) == {}


def test_a_fold_undone_by_its_own_shape_keeps_rows_and_an_op_along_it_does_not() -> None:
    fold = [
        _node("Transpose", ["x"], "steps", perm=[1, 0]),  # [3, N]
        _node("Reshape", ["steps", "flat"], "folded"),  # [3N]
        _node("Shape", ["steps"], "s"),
    ]
    inits = [_ints("flat", [-1])]
    undone = [*fold, _node("Relu", ["folded"], "r"), _node("Reshape", ["r", "s"], "y")]
    assert row_mixing_outputs(_model(undone, inits)) == {}
    summed = [*fold, _node("CumSum", ["folded", "zero"], "c"), _node("Reshape", ["c", "s"], "y")]
    assert "CumSum" in row_mixing_outputs(_model(summed, [*inits, _ints("zero", 0)]))["y"]


def test_a_reshape_inside_a_branch_reads_the_enclosing_graphs_folds() -> None:
    branch = helper.make_graph(
        [_node("Softmax", ["f"], "inner", axis=-1)],
        "b",
        [],
        [helper.make_tensor_value_info("inner", F, None)],
    )
    nodes = [
        _node("Flatten", ["x"], "f", axis=0),
        _node("If", ["cond"], "y", then_branch=branch, else_branch=branch),
    ]
    # A condition a client sends: a constant one's If is replaced by its branch (session 65).
    inputs = [
        helper.make_tensor_value_info("x", F, [None, 3]),
        helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, []),
    ]
    assert ", inside the If node making 'y'" in row_mixing_outputs(_model(nodes, inputs=inputs))["y"]


# --- the batch's size as a value ---


def _size_of_axis(axis: int) -> list[onnx.NodeProto]:
    return [
        _node("Shape", ["x"], "shape"),
        _node("Gather", ["shape", "at"], "n", axis=0),
        _node("Cast", ["n"], "count", to=F),
    ]


def test_dividing_by_the_batchs_size_mixes_and_by_another_dim_does_not() -> None:
    divided = [*_size_of_axis(0), _node("Div", ["x", "count"], "y")]
    assert row_mixing_outputs(_model(divided, [_ints("at", 0)])) == {
        "y": "the Div node making 'y' takes the batch's size as a value: it meets 'x' with 'count', "
        "made from the batch's size by the Shape node making 'shape'"
    }
    assert row_mixing_outputs(_model(divided, [_ints("at", 1)])) == {}
    assert row_mixing_outputs(_model(divided, [_ints("at", -2)]))  # -2 of a length-2 shape: axis 0


def test_the_batchs_size_used_as_a_shape_keeps_rows() -> None:
    # torch's x.view(x.size(0), -1): the size goes to the Reshape's shape, not to the data.
    nodes = [
        _node("Shape", ["x"], "shape"),
        _node("Gather", ["shape", "at"], "n", axis=0),
        _node("Unsqueeze", ["n", "axes"], "n1"),
        _node("Concat", ["n1", "rest"], "target", axis=0),
        _node("Reshape", ["x", "target"], "y"),
    ]
    inits = [_ints("at", 0), _ints("axes", [0]), _ints("rest", [-1])]
    assert row_mixing_outputs(_model(nodes, inits)) == {}


def test_size_and_a_shape_sliced_or_joined_are_followed_position_by_position() -> None:
    size = [_node("Size", ["x"], "n"), _node("Cast", ["n"], "c", to=F), _node("Mul", ["x", "c"], "y")]
    assert "takes the batch's size" in row_mixing_outputs(_model(size))["y"]
    sliced = [
        _node("Shape", ["x"], "shape"),
        _node("Slice", ["shape", "start", "end"], "part"),
        _node("Concat", ["one", "part"], "joined", axis=0),  # [1, dims...]
        _node("Gather", ["joined", "at"], "n", axis=0),
        _node("Cast", ["n"], "c", to=F),
        _node("Add", ["x", "c"], "y"),
    ]
    shape = ("N", "T", 3)

    def got(start: int, end: int, at: int) -> dict[str, str]:
        inits = [_ints("start", [start]), _ints("end", [end]), _ints("one", [1]), _ints("at", at)]
        return row_mixing_outputs(_model(sliced, inits, shape))

    assert got(0, 2, 1) and not got(0, 2, 2) and not got(0, 2, 0)  # joined: [1, N, T]
    assert got(0, 1, -1) and not got(1, 3, 1) and not got(1, 3, 2)  # joined: [1, N] / [1, T, 3]
    # The shape reversed: shape[2::-1] by a Slice with axes and a negative step.
    reverse = _node("Slice", ["shape", "start", "end", "axes", "step"], "part")
    steps = [_ints("start", [2]), _ints("end", [-4]), _ints("axes", [0]), _ints("step", [-1])]

    def picked(at: int) -> bool:
        inits = [*steps, _ints("one", [1]), _ints("at", at)]
        return bool(row_mixing_outputs(_model([sliced[0], reverse, *sliced[2:]], inits, shape)))

    assert [picked(at) for at in range(4)] == [False, False, False, True]  # joined: [1, 3, T, N]


def test_a_shape_op_with_start_and_end_reads_the_batch_only_where_it_reaches() -> None:
    nodes = [
        _node("Shape", ["x"], "dims", start=1),
        _node("ReduceProd", ["dims"], "n", keepdims=0),
        _node("Cast", ["n"], "c", to=F),
        _node("Div", ["x", "c"], "y"),
    ]
    assert row_mixing_outputs(_model(nodes)) == {}
    nodes[0] = _node("Shape", ["x"], "dims", start=0, end=1)
    nodes[1] = _node("Squeeze", ["dims"], "n")
    assert row_mixing_outputs(_model(nodes))


def test_each_rows_position_met_with_the_data_mixes() -> None:
    # x + torch.arange(N)[:, None]: each row's answer depends on where it sits among its batch mates.
    nodes = [
        _node("Shape", ["x"], "shape"),
        _node("Gather", ["shape", "zero"], "n", axis=0),
        _node("Range", ["zero", "n", "one"], "positions"),
        _node("Unsqueeze", ["positions", "axes"], "column"),
        _node("Cast", ["column"], "c", to=F),
        _node("Add", ["x", "c"], "y"),
    ]
    inits = [_ints("zero", 0), _ints("one", 1), _ints("axes", [1])]
    assert "takes the batch's size as a value" in row_mixing_outputs(_model(nodes, inits))["y"]


def _last_token(columns: Sequence[str], batch_dims: int = 0, start: int = 0) -> onnx.ModelProto:
    """h[arange(N), lengths - 1] as torch's dynamo writes it: GatherND of [arange(N), index]."""
    h = helper.make_tensor_value_info("h", F, ["batch", 6, 8])
    lengths = helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch"])
    nodes = [
        _node("Shape", ["lengths"], "shape", start=0, end=1),
        _node("Squeeze", ["shape"], "n"),
        _node("Range", ["start", "n", "one"], "positions"),
        _node("Sub", ["lengths", "one"], "last"),
        _node("Unsqueeze", ["positions", "axes"], "rows"),
        _node("Unsqueeze", ["last", "axes"], "tokens"),
        _node("Concat", list(columns), "indices", axis=-1),
        _node("GatherND", ["h", "indices"], "y", batch_dims=batch_dims),
    ]
    inits = [_ints("start", start), _ints("one", 1), _ints("axes", [1])]
    return _model(nodes, inits, inputs=[h, lengths])


def test_a_gather_nd_picking_each_rows_own_position_keeps_rows() -> None:
    assert row_mixing_outputs(_last_token(["rows", "tokens"])) == {}
    # The positions second, or not from 0, pick from other rows: still read as mixing.
    assert "GatherND" in row_mixing_outputs(_last_token(["tokens", "rows"]))["y"]
    assert "GatherND" in row_mixing_outputs(_last_token(["rows", "tokens"], start=1))["y"]


def test_a_flattened_gather_of_each_rows_position_is_read_as_mixing() -> None:
    # torch's legacy export of h[arange(N), lengths - 1]: Flatten, then Gather of arange(N) * T +
    # lengths - 1. A length past the row reads the next row, another request's state, where alone
    # onnxruntime refuses the index: so it is not vouched for.
    h = helper.make_tensor_value_info("h", F, ["batch", 6, 8])
    lengths = helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch"])
    nodes = [
        _node("Shape", ["h"], "shape"),
        _node("Gather", ["shape", "zero"], "n", axis=0),
        _node("Range", ["zero", "n", "one"], "positions"),
        _node("Mul", ["positions", "six"], "starts"),
        _node("Sub", ["lengths", "one"], "last"),
        _node("Add", ["last", "starts"], "flat_index"),
        _node("Flatten", ["h"], "tokens", axis=2),
        _node("Gather", ["tokens", "flat_index"], "y", axis=0),
    ]
    inits = [_ints("zero", 0), _ints("one", 1), _ints("six", 6)]
    got = row_mixing_outputs(_model(nodes, inits, inputs=[h, lengths]))["y"]
    assert got == (
        "the Gather node making 'y' picks from 'tokens' at indices 'flat_index', made from the batch's "
        "size by the Shape node making 'shape', each row's place in the batch: the load cannot prove "
        "each row picks only from its own (an ArgMax, TopK or Mod over the row's steps, or constants, "
        "would bound them)"
    )
