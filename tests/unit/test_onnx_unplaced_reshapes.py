"""A Reshape of the batch whose shape the load cannot read (server/backends/onnx_unplaced_reshapes.py)
and shapes the load now computes by onnx's reference implementation (onnx_reference_fold.py).

A tester of session 65 viewed x [N, 4, 3] as [-1, Cast(Abs(3.0))] ([4N, 3]: each request answered
with the first request's four rows, OK) and Transpose(x) [4, N, 3] by a shape read from
If(c, Flatten(x), x): both loaded batched, "no proof" since session 51. Session 66."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from server.backends.onnx_reshape_rows import places_batch
from server.backends.onnx_row_mixing import row_mixing_outputs
from tests.support.onnx_graphs import F, flagged_rows_independent, graph_model, ints, node, rows_independent
from tests.unit.test_onnx_if_ranks import FLAG, if_branch

NOT_KNOWN = "its shape's entries are not all known at load"
# An If's axis only some branches give the batch: its length taken as a shape, or a view of it.
PARTLY = ("as a shape, a size or a count elsewhere than the batch's own axis", "only some branches of an If")


def floats(name: str, values: list[float]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, np.float32), name)


def viewed_by(made: list[onnx.NodeProto], inits: list[onnx.TensorProto]) -> onnx.ModelProto:
    """Reshape(x [N, 4, 3], Concat([-1], k)), `made` making k (INT64, one value)."""
    nodes = [*made, node("Concat", ["minus", "k"], "to", axis=0), node("Reshape", ["x", "to"], "y")]
    return graph_model(nodes, [ints("minus", [-1]), *inits], shape=("N", 4, 3))


def cast_k(source: str) -> onnx.NodeProto:
    return node("Cast", [source], "k", to=onnx.TensorProto.INT64)


def test_a_view_by_a_shape_an_op_outside_the_hand_folded_computes_is_read() -> None:
    """[-1, Cast(Abs(3.0))]: 3, so the batch folds into [4N, 3] (read before only from Cast,
    Concat, arithmetic and the like: Abs was "computed at run time")."""
    model = viewed_by([node("Abs", ["three"], "a"), cast_k("a")], [floats("three", [-3.0])])
    assert not rows_independent(model, (4, 3))
    found = row_mixing_outputs(model)
    assert "is the batch's axis folded with other values" in found.get("y", ""), found


@pytest.mark.parametrize(
    ("made", "inits"),
    [
        ([node("Ceil", ["f"], "a"), cast_k("a")], [floats("f", [2.5])]),  # 3
        ([node("Max", ["two", "three"], "k")], [ints("two", [2]), ints("three", [3])]),
        ([node("ReduceProd", ["dims"], "k", keepdims=1)], [ints("dims", [3, 1])]),
        ([node("Div", ["nine", "three"], "k")], [ints("nine", [9]), ints("three", [3])]),
    ],
    ids=["Ceil", "Max", "ReduceProd", "Div"],
)
def test_more_such_shapes_are_read(made: list[onnx.NodeProto], inits: list[onnx.TensorProto]) -> None:
    model = viewed_by(made, inits)
    assert not rows_independent(model, (4, 3))
    assert "folded with other values" in row_mixing_outputs(model).get("y", "")


def test_the_same_fold_by_a_shape_computed_as_the_rows_own_length_keeps_rows() -> None:
    """[-1, Abs(-12)]: [N, 12], each row its own: batched (no over-refusal from the fold)."""
    model = viewed_by([node("Abs", ["twelve"], "k")], [ints("twelve", [-12])])
    assert rows_independent(model, (4, 3))
    assert row_mixing_outputs(model) == {}


@pytest.mark.parametrize("k", [3.0, 12.0], ids=["folds", "keeps"])
def test_a_shape_the_load_cannot_compute_is_refused(k: float) -> None:
    """[-1, Round(Sigmoid(0) * 2k)]: a Sigmoid is not computed at load, so where the rows go is not
    known. Refused whether it folds (k = 3) or keeps rows (k = 12): the load cannot tell which."""
    made = [
        node("Sigmoid", ["zero"], "half"),
        node("Mul", ["half", "twice"], "f"),
        node("Round", ["f"], "a"),
        cast_k("a"),
    ]
    model = viewed_by(made, [floats("zero", [0.0]), floats("twice", [2 * k])])
    assert rows_independent(model, (4, 3)) == (k == 12.0)
    found = row_mixing_outputs(model)
    assert "the Reshape node making 'y' reshapes 'x' ['N', 4, 3] to ['unk__" in found.get("y", ""), found
    assert found["y"].endswith(f"{NOT_KNOWN}, so the load cannot tell where the batch's rows go"), found


def test_a_time_major_view_by_a_shape_of_no_known_rank_is_refused() -> None:
    """Transpose(x) [4, N, 3] viewed as [-1, *Shape(If(c, Flatten(x), x))[1:]], c sent: [N, 12] or
    [N, 4, 3], the 4 ahead of the batch moved into each row either way."""
    flat = helper.make_graph(
        [node("Flatten", ["x"], "p", axis=1)], "p", [], [helper.make_tensor_value_info("p", F, None)]
    )
    nodes = [
        node("Transpose", ["x"], "xt", perm=[1, 0, 2]),
        helper.make_node("If", ["c"], ["w"], then_branch=flat, else_branch=if_branch("q", None)),
        node("Shape", ["w"], "sw"),
        node("Slice", ["sw", "one", "big", "zero"], "rest"),
        node("Concat", ["minus", "rest"], "to", axis=0),
        node("Reshape", ["xt", "to"], "y"),
    ]
    inputs = (helper.make_tensor_value_info("x", F, ["N", 4, 3]), FLAG[1])
    inits = [ints("one", [1]), ints("big", [99]), ints("zero", [0]), ints("minus", [-1])]
    model = graph_model(nodes, inits, inputs=inputs)
    assert not flagged_rows_independent(model, (4, 3))
    found = row_mixing_outputs(model)
    assert "reshapes 'xt' [4, 'N', 3] to a shape of no known rank" in found.get("y", ""), found


def test_a_view_led_by_the_batchs_size_of_no_known_rank_keeps_rows() -> None:
    """x.view(t.size(0), -1) with t = If(c, x, x[..., None]): the first entry is N in both
    branches, the data led by the batch: each output row is its input row whatever follows."""
    then, other = if_branch("b0", None), if_branch("b1", 2)
    nodes = [
        helper.make_node("If", ["c"], ["t"], then_branch=then, else_branch=other),
        node("Shape", ["t"], "sh"),
        node("Slice", ["sh", "zero", "one", "zero"], "n"),
        node("Concat", ["n", "rest"], "view", axis=0),
        node("Reshape", ["x", "view"], "y"),
    ]
    inits = [ints("zero", [0]), ints("one", [1]), ints("rest", [-1]), ints("axis2", [2])]
    model = graph_model(nodes, inits, inputs=FLAG)
    assert flagged_rows_independent(model)
    assert row_mixing_outputs(model) == {}


@pytest.mark.parametrize(
    ("before", "after", "placed"),
    [
        (["N", 4, 3], None, False),  # no rank
        (["N", 4, 3], [None, None], False),  # two entries unknown
        (["N", "T"], ["f", 4], False),  # T may be 4, 8 or 2
        (["N", "T"], ["N", 2, "u"], True),  # the batch's own name
        (["N", 4], ["u", 4], True),  # the one dim not named works out as N
        (["T", "N", 3], ["f", 3], False),  # worked out as T*N: a fold, read as such by the reshape's reading
        ([3, 4], None, True),  # no batch: nothing to place
    ],
)
def test_whether_a_reshape_leaves_the_batch_on_an_axis(
    before: list[int | str | None], after: list[int | str | None] | None, placed: bool
) -> None:
    assert places_batch(before, after, {"N"}, {}) == placed


def test_an_axis_the_batch_was_folded_into_is_the_batchs() -> None:
    folds = {"g": ["N", 2]}
    assert not places_batch(["g", 3], [None, None], {"N"}, folds)
    assert places_batch(["g", 3], ["g", 3], {"N"}, folds)
    assert places_batch(["N", 3], ["g", 3], {"N"}, folds)  # a fold the reshape's reading just found


def _view_by_first_length_of(other: onnx.GraphProto) -> onnx.ModelProto:
    """t = If(c, x, `other`'s value); Softmax(Reshape(x, [t.size(0), -1]), axis=1) viewed back as
    x [N, 4, 3]."""
    nodes = [
        helper.make_node("If", ["c"], ["t"], then_branch=if_branch("b0", None), else_branch=other),
        node("Shape", ["t"], "s"),
        node("Gather", ["s", "zero"], "n", axis=0),
        node("Unsqueeze", ["n", "axis0"], "n1"),
        node("Concat", ["n1", "minus"], "to", axis=0),
        node("Reshape", ["x", "to"], "v"),
        node("Softmax", ["v"], "sm", axis=1),
        node("Shape", ["x"], "xs"),
        node("Reshape", ["sm", "xs"], "y"),
    ]
    inits = [ints("zero", 0), ints("axis0", [0]), ints("minus", [-1])]
    inputs = (helper.make_tensor_value_info("x", F, ["N", 4, 3]), FLAG[1])
    return graph_model(nodes, inits, inputs=inputs)


def test_a_length_only_some_branches_give_the_batch_is_not_its_size_as_a_view() -> None:
    """If(c, x, Transpose(x)): its first length N or 4. x.view(t.size(0), -1) is [4, 3N] for c
    False, the Softmax across requests. The If's axis was taken as the batch's and its length as the
    batch's size itself (a tester, session 66; so since session 65)."""
    flipped = helper.make_graph(
        [node("Transpose", ["x"], "e", perm=[1, 0, 2])],
        "e",
        [],
        [helper.make_tensor_value_info("e", F, None)],
    )
    model = _view_by_first_length_of(flipped)
    assert not flagged_rows_independent(model, (4, 3))
    found = row_mixing_outputs(model)
    assert any(why in found.get("y", "") for why in PARTLY), found


def test_a_length_every_branch_gives_the_batch_is_its_size_as_a_view() -> None:
    """If(c, x, Relu(x)): N in both branches, the view [N, 12] keeps rows."""
    same = helper.make_graph(
        [node("Relu", ["x"], "e")], "e", [], [helper.make_tensor_value_info("e", F, None)]
    )
    model = _view_by_first_length_of(same)
    assert flagged_rows_independent(model, (4, 3))
    assert row_mixing_outputs(model) == {}


def test_a_small_tables_view_with_a_zero_is_computed() -> None:
    """x viewed as [-1, k], k = Reshape([[12]], [0]) (a 0 copies the table's first dim: [12]):
    [N, 12], batched. A 0 had left k "not known" and the view refused (a tester, session 66)."""
    nodes = [
        node("Reshape", ["table", "zero"], "k"),
        node("Concat", ["minus", "k"], "to", axis=0),
        node("Reshape", ["x", "to"], "y"),
    ]
    inits = [ints("table", [[12]]), ints("zero", [0]), ints("minus", [-1])]
    model = graph_model(nodes, inits, shape=("N", 4, 3))
    assert rows_independent(model, (4, 3))
    assert row_mixing_outputs(model) == {}


def test_an_if_returning_such_an_ifs_value_keeps_its_length_apart_from_the_batchs_size() -> None:
    """t = If(c, x, If(c, x, Transpose(x))) (the inner If in a branch): the outer If's axis was
    carried as the batch's, every branch's name being in its batch (a tester, session 66)."""
    flipped = helper.make_graph(
        [node("Transpose", ["x"], "e", perm=[1, 0, 2])],
        "e",
        [],
        [helper.make_tensor_value_info("e", F, None)],
    )
    inner = helper.make_node("If", ["c"], ["io"], then_branch=if_branch("it", None), else_branch=flipped)
    nested = helper.make_graph([inner], "n", [], [helper.make_tensor_value_info("io", F, None)])
    model = _view_by_first_length_of(nested)
    assert not flagged_rows_independent(model, (4, 3))
    found = row_mixing_outputs(model)
    assert any(why in found.get("y", "") for why in PARTLY), found


@pytest.mark.parametrize("root", ["Sqrt", "Pow"])
@pytest.mark.parametrize("first", ["minus", "n1"], ids=["-1", "x.size(0)"])
def test_a_token_grid_of_a_whole_square_root_is_read(root: str, first: str) -> None:
    """ViT's and Swin's x.view(-1, h, h, C), h = int(x.size(1) ** 0.5) of tokens [N, 16, 6]: 4, read
    through the Sqrt or the Pow of the float length (refused as not known, a tester, session 66)."""
    rooted = node("Sqrt", ["lf"], "rf") if root == "Sqrt" else node("Pow", ["lf", "half"], "rf")
    nodes = [
        node("Shape", ["x"], "s"),
        node("Gather", ["s", "one"], "l", axis=0),
        node("Cast", ["l"], "lf", to=F),
        rooted,
        node("Cast", ["rf"], "h", to=onnx.TensorProto.INT64),
        node("Unsqueeze", ["h", "axis0"], "h1"),
        node("Gather", ["s", "zero"], "n", axis=0),
        node("Unsqueeze", ["n", "axis0"], "n1"),
        node("Concat", [first, "h1", "h1", "six"], "to", axis=0),
        node("Reshape", ["x", "to"], "y"),
    ]
    inits = [
        ints("one", 1), ints("zero", 0), ints("axis0", [0]), ints("minus", [-1]), ints("six", [6]),
        numpy_helper.from_array(np.asarray(0.5, np.float32), "half"),
    ]  # fmt: skip
    model = graph_model(nodes, inits, shape=("N", 16, 6))
    assert rows_independent(model, (16, 6))
    assert row_mixing_outputs(model) == {}


def test_a_token_grid_of_a_length_with_no_whole_root_is_refused() -> None:
    """The same view of [N, 15, 6]: h = 3, a view of [-1, 3, 3, 6] cuts rows (135 in 90s)."""
    nodes = [
        node("Shape", ["x"], "s"),
        node("Gather", ["s", "one"], "l", axis=0),
        node("Cast", ["l"], "lf", to=F),
        node("Sqrt", ["lf"], "rf"),
        node("Cast", ["rf"], "h", to=onnx.TensorProto.INT64),
        node("Unsqueeze", ["h", "axis0"], "h1"),
        node("Concat", ["minus", "h1", "h1", "six"], "to", axis=0),
        node("Reshape", ["x", "to"], "y"),
    ]
    model = graph_model(
        nodes, [ints("one", 1), ints("axis0", [0]), ints("minus", [-1]), ints("six", [6])], shape=("N", 15, 6)
    )
    found = row_mixing_outputs(model)
    assert "the Reshape node making 'y' reshapes 'x' ['N', 15, 6]" in found.get("y", ""), found


@pytest.mark.parametrize(
    "viewed",
    [
        [node("Shape", ["x"], "xs"), node("Reshape", ["t", "xs"], "r")],  # t.view(x.shape)
        [node("Reshape", ["t", "twelve"], "r")],  # t.view(-1, 12)
        [node("Reshape", ["t", "zero_minus"], "r")],  # t.view(0, -1)
        [node("Flatten", ["t"], "r", axis=1)],
    ],
    ids=["view(x.shape)", "view(-1, 12)", "view(0, -1)", "Flatten"],
)
def test_a_view_of_an_ifs_value_whose_branches_put_the_batch_apart_is_refused(
    viewed: list[onnx.NodeProto],
) -> None:
    """t = If(c, x, x.transpose(0, 1)), [N, 4, 3] or [4, N, 3], viewed: the second moves rows. Its
    axes were in the batch's names but neither the batch's own, so the view was read as of no batch
    (a tester, session 66; so since session 65)."""
    flipped = helper.make_graph(
        [node("Transpose", ["x"], "e", perm=[1, 0, 2])],
        "e",
        [],
        [helper.make_tensor_value_info("e", F, None)],
    )
    nodes = [
        helper.make_node("If", ["c"], ["t"], then_branch=if_branch("b0", None), else_branch=flipped),
        *viewed,
        node("Relu", ["r"], "y"),
    ]
    inputs = (helper.make_tensor_value_info("x", F, ["N", 4, 3]), FLAG[1])
    model = graph_model(nodes, [ints("twelve", [-1, 12]), ints("zero_minus", [0, -1])], inputs=inputs)
    assert not flagged_rows_independent(model, (4, 3))
    found = row_mixing_outputs(model)
    assert "only some branches of an If give the batch" in found.get("y", ""), found


def _gpt2_final_view(start: str) -> onnx.ModelProto:
    """GPT-2's attention as torch's legacy export writes it, minimal: x [N, T, 4],
    where(bias[:, start:T, :T], x @ x^T, -1e4), softmaxed, times x, viewed (-1, T, 4) as
    GPT2Model's last hidden_states.view((-1,) + input_shape[1:] + (C,))."""
    nodes = [
        node("Shape", ["x"], "s"),
        node("Gather", ["s", "one"], "t", axis=0),
        node("Unsqueeze", ["t", "axis0"], "t1"),
        node("Transpose", ["x"], "xt", perm=[0, 2, 1]),
        node("MatMul", ["x", "xt"], "w"),
        node("Sub", ["t1", start], "from"),
        node("Slice", ["bias", "from", "t1", "axis1"], "rows"),
        node("Slice", ["rows", "zero1", "t1", "axis2"], "mask"),
        node("Where", ["mask", "w", "low"], "masked"),
        node("Softmax", ["masked"], "p", axis=-1),
        node("MatMul", ["p", "x"], "h"),
        node("Concat", ["minus", "t1", "four"], "to", axis=0),
        node("Reshape", ["h", "to"], "y"),
    ]
    inits = [
        ints("one", 1), ints("axis0", [0]), ints("axis1", [1]), ints("axis2", [2]), ints("zero1", [0]),
        ints("minus", [-1]), ints("four", [4]), ints("unit", [1]),
        numpy_helper.from_array(np.tril(np.ones((1, 40, 40), bool)), "bias"),
        numpy_helper.from_array(np.asarray(-1e4, np.float32), "low"),
    ]  # fmt: skip
    return graph_model(nodes, inits, shape=("N", "T", 4))


def test_gpt2s_causal_mask_keeps_the_steps_length_and_its_last_view_batches() -> None:
    """The mask's steps cut from k - q (a size less a size of one class: 0) to T of a fixed 40 are
    T wherever the Where runs, so the view's -1 is N (refused as not known at cb33746; batched
    before as no proof; a tester, session 66)."""
    model = _gpt2_final_view("t1")
    assert rows_independent(model, (5, 4))
    assert row_mixing_outputs(model) == {}


def test_a_mask_cut_from_another_start_proves_nothing() -> None:
    """From T - 1: one step, broadcast; the load does not read it, and the view stays not known."""
    found = row_mixing_outputs(_gpt2_final_view("unit"))
    assert NOT_KNOWN in found.get("y", ""), found


def test_a_view_to_fixed_lengths_says_so() -> None:
    """x [N, 4, 3] viewed as [2, 6] (an export at batch 2 with its shape written out): the message
    names the fixed lengths, not entries unknown (a tester, session 66: PixelShuffle's)."""
    model = graph_model([node("Reshape", ["x", "fixed"], "y")], [ints("fixed", [2, 6])], shape=("N", 4, 3))
    found = row_mixing_outputs(model)
    assert "to [2, 6]: a shape of fixed lengths has no axis of the batch's size" in found.get("y", ""), found
