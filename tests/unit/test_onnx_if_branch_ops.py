"""A second tester's findings on session 65's If reading, each checked on onnxruntime: ops after an
If of two ranks (onnx_branch_axes.py), a broadcast that pairs rows in one branch, and torch's
unbatched-input checks whose condition is a rank test (onnx_constant_fold.py's Not, the branch
inlined by onnx_constant_branches.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from server.backends.onnx_constant_branches import inline_constant_branches
from server.backends.onnx_row_mixing import row_mixing_outputs
from tests.support.onnx_graphs import F, graph_model, ints, node, rows_independent
from tests.unit.test_onnx_if_ranks import FLAG, SIZE_AS_VALUE, divided_by, flagged_rows_independent, if_branch


def _after_if(
    ops: list[onnx.NodeProto], inits: list[onnx.TensorProto], axes: tuple[int | None, int | None]
) -> onnx.ModelProto:
    """t = If(c, x, x unsqueezed at axes[1]) (c sent), then `ops`; x [N, 3]."""
    made = helper.make_node(
        "If", ["c"], ["t"], then_branch=if_branch("p", axes[0]), else_branch=if_branch("q", axes[1])
    )
    axis_inits = [ints(f"axis{a}", [a]) for a in (0, 1, 2)]
    return graph_model([made, *ops], [*inits, *axis_inits], inputs=FLAG, shape=("N", 3))


W = numpy_helper.from_array(np.eye(3, dtype=np.float32), "w")
ZERO = numpy_helper.from_array(np.array(0.0, np.float32), "zero")
AFTER = {
    "MatMul": ([node("MatMul", ["t", "w"], "u")], [W]),
    "Mul": ([node("Mul", ["t", "t"], "u")], []),
    "Where": ([node("Greater", ["t", "zero"], "g"), node("Where", ["g", "t", "zero"], "u")], [ZERO]),
    "ReduceSum": ([node("ReduceSum", ["t", "last"], "u", keepdims=1)], [ints("last", [-1])]),
    "Expand": ([node("Expand", ["t", "ones"], "u")], [ints("ones", [1, 1])]),
    "Flatten": ([node("Flatten", ["t"], "u", axis=1)], []),  # not followed: any entry may be N
}


@pytest.mark.parametrize("op", sorted(AFTER))
def test_the_batchs_size_read_after_an_op_on_an_if_of_two_ranks_mixes(op: str) -> None:
    """x / Shape(op(t))[0], t = If(c, x, x[None]): N or 1. Each had loaded batched: the op's output
    had no rank and no branches to read."""
    ops, inits = AFTER[op]
    at = [ints("at", 0)]
    model = _after_if([*ops, *divided_by(0, source="u")], [*inits, *at], (None, 0))
    assert not flagged_rows_independent(model)
    assert SIZE_AS_VALUE in row_mixing_outputs(model).get("y", "")


def test_a_reduction_over_the_batch_of_every_branch_is_read_as_1() -> None:
    """x / Shape(ReduceSum(t, [0], keepdims))[0], t = If(c, x, x[..., None]): 1 in both branches."""
    ops = [node("ReduceSum", ["t", "first"], "u", keepdims=1), *divided_by(0, source="u")]
    model = _after_if(ops, [ints("first", [0]), ints("at", 0)], (None, 2))
    assert flagged_rows_independent(model)
    assert row_mixing_outputs(model) == {}


def test_a_broadcast_that_pairs_rows_in_one_branch_mixes() -> None:
    """view(x + If(c, x, x[:, None]), N, -1): [N, N, 3] where c is False, every row with every other."""
    ops = [
        node("Add", ["x", "t"], "u"),
        node("Shape", ["x"], "s"),
        node("Slice", ["s", "start", "one", "start"], "n"),
        node("Concat", ["n", "rest"], "view", axis=0),
        node("Reshape", ["u", "view"], "y"),
    ]
    inits = [ints("start", [0]), ints("one", [1]), ints("rest", [-1])]
    model = _after_if(ops, inits, (None, 1))
    assert not flagged_rows_independent(model)
    assert "pairs each row of the batch with every other" in row_mixing_outputs(model).get("y", "")


def _rank_test(rank: int, negated: bool) -> list[onnx.NodeProto]:
    """'c': x's rank is `rank` (or is not, `negated`: TorchScript's `not is_batched`)."""
    tested = "c" if not negated else "is_rank"
    made = [
        node("Shape", ["x"], "s0"),
        node("Size", ["s0"], "rank"),
        node("Equal", ["rank", "wanted"], tested),
    ]
    return [*made, node("Not", ["is_rank"], "c")] if negated else made


@pytest.mark.parametrize("negated", [False, True])
def test_an_untaken_branch_that_mixes_rows_is_not_read(negated: bool) -> None:
    """If(rank(x) != 2, x - sum(x, 0), x): the mixing branch never runs (Not had not been folded)."""
    mixing = helper.make_graph(
        [node("ReduceSum", ["x", "first"], "total", keepdims=1), node("Sub", ["x", "total"], "m")],
        "mixing",
        [],
        [helper.make_tensor_value_info("m", F, None)],
    )
    kept = if_branch("k", None)
    then, other = (mixing, kept) if negated else (kept, mixing)
    nodes = [
        *_rank_test(2, negated),
        helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other),
    ]
    model = graph_model(nodes, [ints("wanted", 2), ints("first", [0])], shape=("N", 3))
    assert rows_independent(model)
    assert row_mixing_outputs(model) == {}


@pytest.mark.parametrize("negated", [False, True])
def test_heads_folded_after_torchs_unbatched_input_check_keep_rows(negated: bool) -> None:
    """t = x if x.dim() == 2 else x[None] (a rank test), then MatMul(t, W), viewed as [N, 2, 2] heads,
    a Softmax over each head, and viewed back: refused before (the If's branch was not inlined, so
    nothing after it had a shape, and the heads' view read N as a width)."""
    unsqueezed = if_branch("q", 0)
    kept = if_branch("p", None)
    then, other = (unsqueezed, kept) if negated else (kept, unsqueezed)
    nodes = [
        *_rank_test(2, negated),
        helper.make_node("If", ["c"], ["t"], then_branch=then, else_branch=other),
        node("MatMul", ["t", "w"], "u"),
        node("Shape", ["x"], "s"),
        node("Slice", ["s", "start", "one", "start"], "n"),
        node("Concat", ["n", "heads"], "split", axis=0),
        node("Reshape", ["u", "split"], "r"),
        node("Softmax", ["r"], "p_r", axis=-1),
        node("Concat", ["n", "rest"], "back", axis=0),
        node("Reshape", ["p_r", "back"], "y"),
    ]
    weights = numpy_helper.from_array(np.arange(16, dtype=np.float32).reshape(4, 4) / 16, "w")
    inits = [weights, ints("wanted", 2), ints("axis0", [0]), ints("start", [0]), ints("one", [1])]
    inits += [ints("heads", [2, 2]), ints("rest", [-1])]
    model = graph_model(nodes, inits, shape=("N", 4))
    assert rows_independent(model, row=(4,))
    assert row_mixing_outputs(model) == {}


def _rank_if(then: onnx.GraphProto, inits: tuple[onnx.TensorProto, ...] = ()) -> onnx.ModelProto:
    """y = If(rank(x) == 2, then, x) on x [N, 3], shapes inferred as the reading's probe has them."""
    nodes = [
        *_rank_test(2, False),
        helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=if_branch("e", None)),
    ]
    return onnx.shape_inference.infer_shapes(graph_model(nodes, [ints("wanted", 2), *inits], shape=("N", 3)))


def test_an_if_a_rank_test_decides_is_replaced_by_its_branch() -> None:
    model = _rank_if(if_branch("p", 0))
    assert inline_constant_branches(model)
    ops = [n.op_type for n in model.graph.node]
    assert "If" not in ops and ops[-2:] == ["Unsqueeze", "Identity"]
    assert model.graph.node[-1].input[0] == "p" and model.graph.node[-1].output[0] == "y"


def test_an_if_whose_branch_holds_a_body_or_shadows_a_name_is_kept() -> None:
    inner = helper.make_node(
        "If", ["c"], ["q"], then_branch=if_branch("qa", None), else_branch=if_branch("qb", 0)
    )
    holding = helper.make_graph([inner], "holding", [], [helper.make_tensor_value_info("q", F, None)])
    shadowing = helper.make_graph(
        [node("Identity", ["x"], "rank")], "shadowing", [], [helper.make_tensor_value_info("rank", F, None)]
    )
    for branch in (holding, shadowing):
        model = _rank_if(branch)
        assert not inline_constant_branches(model)
        assert [n.op_type for n in model.graph.node][-1] == "If"


def test_a_condition_a_client_may_send_is_no_constant() -> None:
    model = _rank_if(if_branch("p", 0))
    cond = numpy_helper.from_array(np.array(True), "sent")
    model.graph.initializer.append(cond)
    model.graph.input.append(helper.make_tensor_value_info("sent", onnx.TensorProto.BOOL, []))
    model.graph.node[-1].input[0] = "sent"
    assert not inline_constant_branches(model)
    model.graph.input.pop()  # the same initializer, not listed as an input: a constant
    assert inline_constant_branches(model)


def test_an_if_a_false_rank_test_decides_is_replaced_by_its_else_branch() -> None:
    nodes = [
        *_rank_test(3, False),
        helper.make_node("If", ["c"], ["y"], then_branch=if_branch("p", None), else_branch=if_branch("q", 0)),
    ]
    model = onnx.shape_inference.infer_shapes(graph_model(nodes, [ints("wanted", 3)], shape=("N", 3)))
    model.graph.initializer.append(ints("axis0", [0]))
    assert inline_constant_branches(model)
    assert [n.op_type for n in model.graph.node][-2:] == ["Unsqueeze", "Identity"]


def test_every_if_a_rank_test_decides_is_replaced_its_number_written_as_a_constant_node() -> None:
    """Two Ifs in turn, the rank compared with a Constant node (as torch writes it)."""
    nodes = [
        helper.make_node("Constant", [], ["wanted"], value=numpy_helper.from_array(np.array(2, np.int64))),
        *_rank_test(2, False),
        helper.make_node("If", ["c"], ["t"], then_branch=if_branch("p", None), else_branch=if_branch("q", 0)),
        helper.make_node(
            "If", ["c"], ["y"], then_branch=if_branch("r", None, "t"), else_branch=if_branch("s", 0, "t")
        ),
    ]
    model = onnx.shape_inference.infer_shapes(graph_model(nodes, [ints("axis0", [0])], shape=("N", 3)))
    assert inline_constant_branches(model)
    assert "If" not in [n.op_type for n in model.graph.node]


def test_a_constant_conditions_branch_that_holds_a_body_is_read_alone() -> None:
    """If(rank(x) == 2, If(c, x, x) , x - x.sum(0)): not inlined (its branch holds an If), its
    mixing branch never runs, so not read (the walk's constant condition)."""
    inner = helper.make_node(
        "If", ["flag"], ["kept"], then_branch=if_branch("a", None), else_branch=if_branch("b", None)
    )
    holding = helper.make_graph([inner], "holding", [], [helper.make_tensor_value_info("kept", F, None)])
    mixing = helper.make_graph(
        [node("ReduceSum", ["x", "first"], "total", keepdims=1), node("Sub", ["x", "total"], "m")],
        "mixing",
        [],
        [helper.make_tensor_value_info("m", F, None)],
    )
    inputs = [
        helper.make_tensor_value_info("x", F, ["N", 3]),
        helper.make_tensor_value_info("flag", onnx.TensorProto.BOOL, []),
    ]
    for taken, other, mixes in ((holding, mixing, False), (mixing, holding, True)):
        nodes = [
            *_rank_test(2, False),
            helper.make_node("If", ["c"], ["y"], then_branch=taken, else_branch=other),
        ]
        model = graph_model(nodes, [ints("wanted", 2), ints("first", [0])], inputs=inputs)
        found = row_mixing_outputs(model)
        assert bool(found) == mixes, found


def test_values_after_an_if_of_two_ranks_keep_rows_where_no_branch_pairs_them() -> None:
    """y = Relu(If(c, x, x[:, None])): [N, 3] or [N, 1, 3], each row its own."""
    model = _after_if([node("Relu", ["t"], "y")], [], (None, 1))
    assert flagged_rows_independent(model)
    assert row_mixing_outputs(model) == {}
