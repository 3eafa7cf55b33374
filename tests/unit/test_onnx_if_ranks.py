"""An If whose branches return values of two ranks (x and Unsqueeze(x)): onnx tells its output no
rank, and x / Shape(it)[k] had loaded batched whatever k held (session 64's open HIGH). Each
branch's value is now read with its own shape (onnx_rankless.py): an entry of the Shape is the
batch's size itself where every branch has the batch's axis there, made from it where some branch
does; a constant condition reads only the branch it takes, and a condition every row's values set
makes the output's lengths theirs (onnx_mixing_graph.DataSizedLengths). Each verdict is checked
against onnxruntime where the model runs as the test builds it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from server.backends.onnx_row_mixing import row_mixing_outputs
from tests.support.onnx_graphs import F, flagged_rows_independent, graph_model, ints, node, rows_independent

SIZE_AS_VALUE = "takes the batch's size as a value"


def if_branch(name: str, axis: int | None, source: str = "x") -> onnx.GraphProto:
    """A branch returning the outer `source`, unsqueezed at `axis` where one is given."""
    made = (
        node("Identity", [source], name) if axis is None else node("Unsqueeze", [source, f"axis{axis}"], name)
    )
    return helper.make_graph([made], name, [], [helper.make_tensor_value_info(name, F, None)])


def two_ranks(
    condition: list[onnx.NodeProto],
    reads: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
    axes: tuple[int | None, int | None] = (None, 0),
    inputs: tuple[onnx.ValueInfoProto, ...] = (),
) -> onnx.ModelProto:
    """t = If(c, x unsqueezed at axes[0], at axes[1]) (None: x itself), then `reads` of t; x [N, 3]."""
    then, other = (if_branch(f"b{i}", axis) for i, axis in enumerate(axes))
    nodes = [*condition, helper.make_node("If", ["c"], ["t"], then_branch=then, else_branch=other), *reads]
    axis_inits = [ints(f"axis{a}", [a]) for a in (0, 1, 2, 3)]
    return graph_model(nodes, [*inits, *axis_inits], inputs=inputs, shape=("N", 3))


def divided_by(at: int, start: int = 0, source: str = "t") -> list[onnx.NodeProto]:
    """x / Shape(source)[start:][at]."""
    shape = node("Shape", [source], "sh", start=start) if start else node("Shape", [source], "sh")
    return [
        shape,
        node("Gather", ["sh", "at"], "n", axis=0),
        node("Cast", ["n"], "nf", to=F),
        node("Div", ["x", "nf"], "y"),
    ]


def at(index: int) -> onnx.TensorProto:
    return ints("at", index)


def constant(value: bool) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value), "c")


@pytest.mark.parametrize("index", [0, 1])
@pytest.mark.parametrize("axes", [(None, 0), (0, None)], ids=["then x", "then Unsqueeze(x)"])
@pytest.mark.parametrize("taken", [True, False])
def test_a_constant_condition_reads_the_branch_it_takes(
    taken: bool, axes: tuple[int | None, int | None], index: int
) -> None:
    model = two_ranks([], divided_by(index), [constant(taken), at(index)], axes)
    independent = rows_independent(model)
    found = row_mixing_outputs(model)
    assert (found == {}) == independent, found
    if not independent:
        assert SIZE_AS_VALUE in found["y"] and "the Shape node making 'sh'" in found["y"], found


FLAG = (
    helper.make_tensor_value_info("x", F, ["N", 3]),
    helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, []),
)


@pytest.mark.parametrize(
    ("axes", "index", "start", "mixes"),
    [
        ((None, 0), 0, 0, True),  # N or 1
        ((None, 0), 1, 0, True),  # 3 or N
        ((None, 0), 0, 1, True),  # Shape(t)[1:][0]: 3 or N
        ((None, 2), 0, 0, True),  # N in both branches
        ((None, 2), 1, 0, False),  # 3 in both
        ((None, 2), 0, 1, False),  # Shape(t)[1:][0]: 3 in both
        ((1, 2), 0, 0, True),  # N in both
        ((1, 2), 1, 0, False),  # 1 or 3
    ],
)
def test_a_condition_a_request_sends_reads_every_branch(
    axes: tuple[int | None, int | None], index: int, start: int, mixes: bool
) -> None:
    model = two_ranks([], divided_by(index, start), [at(index)], axes, FLAG)
    assert flagged_rows_independent(model) != mixes
    found = row_mixing_outputs(model)
    assert (SIZE_AS_VALUE in found.get("y", "")) == mixes, found
    assert mixes or found == {}


def _reshaped_by_first_length(
    data: list[onnx.NodeProto], source: str = "x", first: bool = True
) -> list[onnx.NodeProto]:
    """`data`, then Reshape(source, Concat(Shape(t)[:1], [-1])) (or [-1] first where not `first`)."""
    pieces = ["n", "rest"] if first else ["rest", "n"]
    return [
        *data,
        node("Shape", ["t"], "sh"),
        node("Slice", ["sh", "zero", "one", "zero"], "n"),
        node("Concat", pieces, "view", axis=0),
        node("Reshape", [source, "view"], "y"),
    ]


VIEW_INITS = [ints("zero", [0]), ints("one", [1]), ints("rest", [-1])]


def test_a_length_every_branch_gives_the_batch_keeps_rows_as_a_shape() -> None:
    """x.view(t.size(0), -1), t x [N, 3] or x[..., None] [N, 3, 1]: N in both, the batch's own axis."""
    reads = _reshaped_by_first_length([])
    inits = VIEW_INITS
    model = two_ranks([], reads, inits, (None, 2), FLAG)
    assert flagged_rows_independent(model)
    assert row_mixing_outputs(model) == {}


def test_a_length_some_branch_gives_the_batch_is_not_the_batchs_own_axis() -> None:
    """The same view by t x [N, 3] or Unsqueeze(x, 0) [1, N, 3]: its first length N or 1. Refused
    (rows would keep here, as one row of N or N rows; the load cannot tell which)."""
    reads = _reshaped_by_first_length([])
    inits = VIEW_INITS
    found = row_mixing_outputs(two_ranks([], reads, inits, (None, 0), FLAG))
    assert "as a shape, a size or a count" in found.get("y", ""), found


def test_a_branch_chosen_by_every_rows_values_sets_the_lengths_read() -> None:
    """If(sum(x) > 1e9, x, Unsqueeze(x)): the else branch runs here, and x / Shape(t)[0] is x / 1, yet
    which branch runs is every row's values' choice: refused, naming the If."""
    condition = [node("ReduceSum", ["x"], "s", keepdims=0), node("Greater", ["s", "big"], "c")]
    big = numpy_helper.from_array(np.array(1e9, np.float32), "big")
    model = two_ranks(condition, divided_by(0), [big, at(0)], (None, 0))
    assert rows_independent(model)  # (by these values: not for a batch summing past 1e9)
    found = row_mixing_outputs(model).get("y", "")
    assert "reads a length of 't' that the If node making 't' set from every row's values" in found, found


def _nested(through: str = "Identity", source: str = "x") -> onnx.ModelProto:
    """t = If(c, `through`(If(c, s, Unsqueeze(s))), s), s = `source`: its then branch returns a value
    of no known rank, read by the inner If's own branches."""
    inner = helper.make_node(
        "If", ["c"], ["it"], then_branch=if_branch("p", None, source), else_branch=if_branch("q", 0, source)
    )
    then = helper.make_graph(
        [inner, node(through, ["it"], "kept")], "nest", [], [helper.make_tensor_value_info("kept", F, None)]
    )
    outer = helper.make_node("If", ["c"], ["t"], then_branch=then, else_branch=if_branch("r", None, source))
    table = numpy_helper.from_array(np.ones((2, 3), np.float32), "table")
    inits = [at(0), ints("axis0", [0]), table]
    return graph_model([outer, *divided_by(0)], inits, inputs=FLAG, shape=("N", 3))


@pytest.mark.parametrize("through", ["Identity", "Relu"])
def test_an_if_of_two_ranks_inside_a_branch_is_read_by_its_own_branches(through: str) -> None:
    model = _nested(through)
    assert not flagged_rows_independent(model)
    assert SIZE_AS_VALUE in row_mixing_outputs(model).get("y", "")


def test_a_value_of_no_known_rank_through_an_op_that_may_reshape_it_may_hold_the_batchs_size() -> None:
    """Through a Flatten the inner If's branches say nothing of its shape: any entry of the outer
    If's Shape may be the batch's size."""
    model = _nested("Flatten")
    assert not flagged_rows_independent(model)
    assert SIZE_AS_VALUE in row_mixing_outputs(model).get("y", "")


def test_such_a_value_made_from_no_batched_input_holds_no_size() -> None:
    """The same made from a [2, 3] table, not x: its lengths are the table's, whatever the batch."""
    model = _nested("Flatten", "table")
    assert flagged_rows_independent(model)
    assert row_mixing_outputs(model) == {}


# A tester's findings on the above (session 65), each loading batched before and checked here on
# onnxruntime.


@pytest.mark.parametrize("condition", ["constant", "sent"])
def test_branches_of_one_rank_with_the_batch_on_other_axes_hold_its_size(condition: str) -> None:
    """If(c, x[:, None], x[None]): onnx names both leading axes anew ([unk, unk, 3]); the first is
    N or 1 (BatchNames.adopt: an axis some branches give the batch is the batch's)."""
    inits, inputs = ([constant(True)], ()) if condition == "constant" else ([], FLAG)
    model = two_ranks([], divided_by(0), [*inits, at(0)], (1, 0), inputs)
    assert not (rows_independent(model) if condition == "constant" else flagged_rows_independent(model))
    assert SIZE_AS_VALUE in row_mixing_outputs(model).get("y", "")


@pytest.mark.parametrize("op", ["Add", "Softmax", "Relu"])
def test_a_length_read_after_an_op_that_keeps_or_broadcasts_the_branches_holds_the_size(op: str) -> None:
    """x / Shape(op(t))[0], t = If(c, x, x[:, None]): N in both branches, through a bias Add
    (broadcast with [3]), a Softmax, a Relu."""
    after = node("Add", ["t", "bias"], "u") if op == "Add" else node(op, ["t"], "u")
    reads = [after, *divided_by(0, source="u")]
    bias = numpy_helper.from_array(np.array([1.0, 2.0, 3.0], np.float32), "bias")
    model = two_ranks([], reads, [bias, at(0)], (None, 1), FLAG)
    assert not flagged_rows_independent(model)
    assert SIZE_AS_VALUE in row_mixing_outputs(model).get("y", "")


def test_a_reshape_to_a_shape_of_no_known_length_with_the_size_after_its_first_entry_moves_rows() -> None:
    """Reshape(x, Concat([-1], Shape(t)[:1])): x [N, 3] to [3, N] (onnx_size_slots.placed: an output
    of no known dims keeps rows only with the size itself first)."""
    reads = _reshaped_by_first_length([], first=False)
    inits = VIEW_INITS
    model = two_ranks([], reads, inits, (None, 2), FLAG)
    assert not flagged_rows_independent(model)
    assert "as a shape, a size or a count" in row_mixing_outputs(model).get("y", "")


def test_torchs_unbatched_input_check_keeps_rows_before_a_gru() -> None:
    """`if x.dim() == 2: x = x.unsqueeze(0)` on x [N, 5, 3] (a rank folded: the condition is
    constant False), then zeros(1, x.size(0), H) as a GRU's first state: the If's output is the
    branch that runs, [N, 5, 3] (refused before: the GRU's input of no known shape)."""
    hidden = 2
    rng = np.random.default_rng(1)
    weights = [
        numpy_helper.from_array(rng.standard_normal((1, 3 * hidden, k)).astype(np.float32), name)
        for name, k in (("w", 3), ("r", hidden))
    ]
    nodes = [
        node("Shape", ["x"], "s0"),
        node("Size", ["s0"], "rank"),
        node("Equal", ["rank", "two"], "c"),
        helper.make_node("If", ["c"], ["t"], then_branch=if_branch("p", 0), else_branch=if_branch("q", None)),
        node("Shape", ["t"], "sh"),
        node("Slice", ["sh", "zero", "one", "zero"], "n"),
        node("Concat", ["one", "n", "width"], "h0_shape", axis=0),
        node("ConstantOfShape", ["h0_shape"], "h0", value=helper.make_tensor("v", F, [1], [0.0])),
        node("Transpose", ["t"], "steps", perm=[1, 0, 2]),
        helper.make_node("GRU", ["steps", "w", "r", "", "", "h0"], ["", "last"], hidden_size=hidden),
        node("Squeeze", ["last", "zero"], "y"),
    ]
    inits = [*weights, ints("two", 2), ints("zero", [0]), ints("one", [1]), ints("width", [hidden])]
    inits.append(ints("axis0", [0]))
    model = graph_model(nodes, inits, shape=("N", 5, 3))
    assert rows_independent(model, row=(5, 3))
    assert row_mixing_outputs(model) == {}


def test_a_table_of_sizes_is_read_by_its_rows_not_its_flat_positions() -> None:
    """x / Reshape(Concat(Shape(x), Shape(x)), [2, 2])[1][0]: N (a Gather along the rows of a 2-D
    table had been read as picking its flat position 1, 3)."""
    reads = [
        node("Shape", ["x"], "s"),
        node("Concat", ["s", "s"], "both", axis=0),
        node("Reshape", ["both", "square"], "table"),
        node("Gather", ["table", "one"], "row", axis=0),
        node("Gather", ["row", "zero"], "n", axis=0),
        node("Cast", ["n"], "nf", to=F),
        node("Div", ["x", "nf"], "y"),
    ]
    model = graph_model(reads, [ints("square", [2, 2]), ints("one", 1), ints("zero", 0)], shape=("N", 3))
    assert not rows_independent(model)
    assert SIZE_AS_VALUE in row_mixing_outputs(model).get("y", "")


@pytest.mark.parametrize(
    ("op", "index", "mixes"),
    [
        ("Squeeze", 0, True),  # [N, 3] in both
        ("Unsqueeze", 1, True),  # [1, N, 3] or [1, N, 1, 3]
        ("Unsqueeze", 0, False),  # 1 in both
        ("Transpose", 1, True),  # [3, N] or [3, 1, N]: N or 1
    ],
)
def test_a_length_read_after_a_squeeze_an_unsqueeze_or_a_transpose_of_the_branches(
    op: str, index: int, mixes: bool
) -> None:
    """x / Shape(op(t))[index], t = If(c, x, x[:, None]): each branch's axes moved as the op says
    (a Squeeze of every axis of 1, an Unsqueeze at [0], a Transpose reversing them)."""
    after = node("Unsqueeze", ["t", "axis0"], "u") if op == "Unsqueeze" else node(op, ["t"], "u")
    model = two_ranks([], [after, *divided_by(index, source="u")], [at(index)], (None, 1), FLAG)
    assert flagged_rows_independent(model) != mixes
    found = row_mixing_outputs(model)
    assert (SIZE_AS_VALUE in found.get("y", "")) == mixes, found
    assert mixes or found == {}


def test_a_constant_cut_into_as_many_rows_as_the_batch_has_by_such_a_shape_mixes() -> None:
    """A [4, 3] table viewed as [N, -1]: the rows are the table's, cut by how many were batched."""
    table = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "table")
    reads = _reshaped_by_first_length([], "table")
    model = two_ranks([], reads, [table, *VIEW_INITS], (None, 2), FLAG)
    assert not flagged_rows_independent(model)
    assert "as a shape, a size or a count" in row_mixing_outputs(model).get("y", "")


def test_a_time_major_view_by_such_a_shape_moves_rows() -> None:
    """x [N, T, 3] as [T, N, 3], viewed as [N, -1] by t's first length: rows moved."""
    given = (helper.make_tensor_value_info("x", F, ["N", "T", 3]), FLAG[1])
    major = [node("Transpose", ["x"], "major", perm=[1, 0, 2])]
    model = two_ranks([], _reshaped_by_first_length(major, "major"), VIEW_INITS, (None, 3), given)
    found = row_mixing_outputs(model)
    assert "as a shape, a size or a count" in found.get("y", ""), found


def test_a_nested_ifs_branches_that_agree_on_a_length_keep_it() -> None:
    """x / Shape(t)[1], t = If(c, Identity(If(c, x, x[..., None])), x): 3 in all three branches (read
    as the batch's size, had the nested If's branches not been read)."""
    inner = helper.make_node(
        "If", ["c"], ["it"], then_branch=if_branch("p", None), else_branch=if_branch("q", 2)
    )
    then = helper.make_graph(
        [inner, node("Identity", ["it"], "kept")],
        "nest",
        [],
        [helper.make_tensor_value_info("kept", F, None)],
    )
    outer = helper.make_node("If", ["c"], ["t"], then_branch=then, else_branch=if_branch("r", None))
    model = graph_model([outer, *divided_by(1)], [at(1), ints("axis2", [2])], inputs=FLAG, shape=("N", 3))
    assert flagged_rows_independent(model)
    assert row_mixing_outputs(model) == {}


def test_a_position_past_a_shorter_branchs_rank_is_read() -> None:
    """t = If(c, x.T[None] [1, 3, N], x.T [3, N]): x / Shape(t)[1] is 3 or N (the shorter branch read
    first, its rank short of the other's batch position)."""
    flipped = helper.make_graph(
        [node("Transpose", ["x"], "f")], "flipped", [], [helper.make_tensor_value_info("f", F, None)]
    )
    raised = helper.make_graph(
        [node("Transpose", ["x"], "g0"), node("Unsqueeze", ["g0", "axis0"], "g")],
        "raised",
        [],
        [helper.make_tensor_value_info("g", F, None)],
    )
    made = helper.make_node("If", ["c"], ["t"], then_branch=raised, else_branch=flipped)
    model = graph_model([made, *divided_by(1)], [at(1), ints("axis0", [0])], inputs=FLAG, shape=("N", 3))
    assert not flagged_rows_independent(model)
    assert SIZE_AS_VALUE in row_mixing_outputs(model).get("y", "")


def test_the_size_of_an_if_of_two_ranks_made_from_no_batched_input_is_no_size() -> None:
    """x / Size(If(c, table, table[None])): 6 in both branches, whatever the batch."""
    table = numpy_helper.from_array(np.ones((2, 3), np.float32), "table")
    made = helper.make_node(
        "If", ["c"], ["t"], then_branch=if_branch("p", None, "table"), else_branch=if_branch("q", 0, "table")
    )
    reads = [made, node("Size", ["t"], "n"), node("Cast", ["n"], "nf", to=F), node("Div", ["x", "nf"], "y")]
    model = graph_model(reads, [table, ints("axis0", [0])], inputs=FLAG, shape=("N", 3))
    assert flagged_rows_independent(model)
    assert row_mixing_outputs(model) == {}


def test_a_slice_of_a_table_of_sizes_is_read_by_its_rows() -> None:
    """x / Reshape(Reshape(Concat(Shape(x), Shape(x)), [2, 2])[1:2], [-1])[0]: N."""
    reads = [
        node("Shape", ["x"], "s"),
        node("Concat", ["s", "s"], "both", axis=0),
        node("Reshape", ["both", "square"], "table"),
        node("Slice", ["table", "one", "two", "zero"], "row"),
        node("Reshape", ["row", "flat"], "flat_row"),
        node("Gather", ["flat_row", "first"], "n", axis=0),
        node("Cast", ["n"], "nf", to=F),
        node("Div", ["x", "nf"], "y"),
    ]
    inits = [ints("square", [2, 2]), ints("one", [1]), ints("two", [2]), ints("zero", [0])]
    inits += [ints("flat", [-1]), ints("first", 0)]
    model = graph_model(reads, inits, shape=("N", 3))
    assert not rows_independent(model)
    assert SIZE_AS_VALUE in row_mixing_outputs(model).get("y", "")
