"""A length read off a Shape as a value where onnx could not tell it (session 63's open items): a
ConcatFromSequence of the batch's rows names the axis it joins anew (`unk__`) and a Loop's output
has no known rank, so x / Shape(t)[k] (N, 3N, ...) had loaded batched, the ConcatFromSequence's
values alone read as mixing. Now a mixing op's axes named anew are made from the batch's size
(BatchNames.carry), and a Shape of a Loop's or Scan's output of no known rank made from a batched
input holds it (BatchSizeValues._follow)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from server.backends.onnx_row_mixing import row_mixing_outputs
from tests.support.onnx_graphs import (
    ONCE,
    carried_once,
    graph_model,
    ints,
    node,
    once_round,
    rows_independent,
)

SIZE_AS_VALUE = "takes the batch's size as a value"


def divided_by_length(made: list[onnx.NodeProto], at: int, inits: tuple = ()) -> onnx.ModelProto:
    """x [N, 3] divided by entry `at` of the Shape of 't' (made by `made`)."""
    nodes = [
        *made,
        node("Shape", ["t"], "sh"),
        node("Gather", ["sh", "at"], "n", axis=0),
        node("Cast", ["n"], "nf", to=onnx.TensorProto.FLOAT),
        node("Div", ["x", "nf"], "y"),
    ]
    return graph_model(nodes, [*inits, ints("at", at)], shape=("N", 3))


def joined(split_axis: int, keepdims: int, axis: int, new_axis: int) -> list[onnx.NodeProto]:
    return [
        helper.make_node("SplitToSequence", ["x"], ["s"], axis=split_axis, keepdims=keepdims),
        helper.make_node("ConcatFromSequence", ["s"], ["t"], axis=axis, new_axis=new_axis),
    ]


@pytest.mark.parametrize(
    ("keepdims", "axis", "new_axis", "at"),
    [(0, 1, 1, 1), (0, 0, 1, 0), (1, 1, 0, 1), (1, 0, 0, 0)],
    ids=["[3, N]", "[N, 3]", "[1, 3N]", "[N, 3] again"],
)
def test_a_length_joined_from_the_batchs_rows_read_as_a_value_mixes_rows(
    keepdims: int, axis: int, new_axis: int, at: int
) -> None:
    model = divided_by_length(joined(0, keepdims, axis, new_axis), at)
    assert not rows_independent(model)  # what onnxruntime does with it
    why = row_mixing_outputs(model).get("y", "")
    assert SIZE_AS_VALUE in why and "the Shape node making 'sh'" in why, why


def test_columns_split_and_joined_back_keep_rows_and_their_length() -> None:
    """SplitToSequence along the columns, joined along them: [N, 3], rows kept; its width read as a
    value is 3 whatever the batch."""
    model = divided_by_length(joined(1, 1, 1, 0), 1)
    assert rows_independent(model)
    assert row_mixing_outputs(model) == {}


def test_the_first_length_of_a_loops_output_of_no_known_rank_made_from_the_batch_mixes_rows() -> None:
    model = divided_by_length([carried_once("x", "t")], 0, tuple(ONCE))
    assert not rows_independent(model)
    assert SIZE_AS_VALUE in row_mixing_outputs(model).get("y", "")


def growing_loop(out: str = "t") -> onnx.NodeProto:
    """A Loop of one turn whose body joins its carried value to itself along axis 1: [N, 3] in,
    [N, 6] out, so the value changes shape by turns and onnx tells the output no rank."""
    step = node("Concat", ["c_in", "c_in"], "c_out", axis=1)
    return helper.make_node("Loop", ["once", "go", "x"], [out], body=once_round(step))


def test_any_length_of_a_loops_output_that_changes_shape_is_read_as_the_batchs_size() -> None:
    """Refused though rows are independent (its second length is 6): onnx tells no rank, so the load
    cannot tell which entry is the batch's."""
    model = divided_by_length([growing_loop()], 1, tuple(ONCE))
    assert rows_independent(model)
    assert SIZE_AS_VALUE in row_mixing_outputs(model).get("y", "")


def test_a_loops_output_that_keeps_its_shape_is_read_by_its_lengths() -> None:
    """Loop(x) returning its carried value as it took it is [N, 3] whatever its turns (onnx had told
    no rank, and its second length, 3, was read as the batch's; session 65)."""
    model = divided_by_length([carried_once("x", "t")], 1, tuple(ONCE))
    assert rows_independent(model)
    assert row_mixing_outputs(model) == {}


def test_a_loops_output_made_from_no_batched_input_is_not_the_batchs_size() -> None:
    table = numpy_helper.from_array(np.ones((2, 3), np.float32), "table")
    model = divided_by_length([carried_once("table", "t")], 0, (*ONCE, table))
    assert rows_independent(model)
    assert row_mixing_outputs(model) == {}


# A tester's findings on the above (session 64), each loading batched before and checked here on
# onnxruntime.


def test_a_length_made_from_the_batchs_as_a_shape_is_not_the_batchs_own_axis() -> None:
    """ConstantOfShape(Shape(x[1:]) + 0) is N - 1 ones, summed over that axis: x * (N - 1). The
    size's position held N - 1 and was read as the batch's size itself (onnx_size_slots.py)."""
    one = helper.make_tensor("v", onnx.TensorProto.FLOAT, [1], [1.0])
    for op, amount in (("Max", [1, 1]), ("Add", [0, 0])):
        nodes = [
            node("Slice", ["x", "start", "end", "axis0"], "rest"),
            node("Shape", ["rest"], "sh"),
            node(op, ["sh", "amount"], "grown"),
            node("ConstantOfShape", ["grown"], "ones", value=one),
            node("ReduceSum", ["ones", "axis0"], "count", keepdims=1),
            node("Mul", ["x", "count"], "y"),
        ]
        inits = [ints("start", [1]), ints("end", [1 << 40]), ints("axis0", [0]), ints("amount", amount)]
        model = graph_model(nodes, inits, shape=("N", 3))
        assert not rows_independent(model), op
        assert SIZE_AS_VALUE in row_mixing_outputs(model).get("y", ""), op


@pytest.mark.parametrize("grows", [False, True], ids=["keeps its shape", "of no known rank"])
@pytest.mark.parametrize("op", ["Identity", "Relu", "Cast"])
def test_a_length_of_a_loops_output_through_another_op_mixes_rows(op: str, grows: bool) -> None:
    cast = {"to": onnx.TensorProto.FLOAT} if op == "Cast" else {}
    made = [growing_loop("lo") if grows else carried_once("x", "lo"), node(op, ["lo"], "t", **cast)]
    model = divided_by_length(made, 0, tuple(ONCE))
    assert not rows_independent(model)
    assert SIZE_AS_VALUE in row_mixing_outputs(model).get("y", "")


@pytest.mark.parametrize("grows", [False, True], ids=["keeps its shape", "of no known rank"])
def test_a_length_read_in_the_body_of_a_loop_over_such_an_output_mixes_rows(grows: bool) -> None:
    """A second Loop carries Loop(x) and divides it by its first length inside."""
    body = _body(_divided_by_first_length("c"), [("c", None)], turns=True)
    first = growing_loop("lo") if grows else carried_once("x", "lo")
    nodes = [first, helper.make_node("Loop", ["once", "go", "lo"], ["y"], body=body)]
    model = graph_model(nodes, [*ONCE, ints("first", 0)], shape=("N", 3))
    assert not rows_independent(model)
    assert "made from the batch's size by the Shape node making 'sh'" in row_mixing_outputs(model).get(
        "y", ""
    )


def test_a_width_a_mixing_op_passed_on_is_not_made_from_the_batchs_size() -> None:
    """A CumSum over the batch (its values unused) of Compress(x)'s two columns: the width it passed
    on, not one it made, still cuts x[:, :2]."""
    keep = numpy_helper.from_array(np.array([True, False, True]), "keep")
    for read in ("t", "summed"):
        nodes = [
            node("Compress", ["x", "keep"], "t", axis=1),
            node("CumSum", ["t", "axis"], "summed"),
            node("Shape", [read], "sh"),
            node("Gather", ["sh", "one"], "w", axis=0),
            node("Unsqueeze", ["w", "axes"], "end"),
            node("Slice", ["x", "start", "end", "columns"], "y"),
        ]
        inits = [
            keep,
            ints("axis", 0),
            ints("one", 1),
            ints("axes", [0]),
            ints("start", [0]),
            ints("columns", [1]),
        ]
        model = graph_model(nodes, inits, shape=("N", 3))
        assert rows_independent(model), read
        assert row_mixing_outputs(model) == {}, read


def test_a_loops_output_of_no_known_rank_shaped_by_its_own_shape_is_refused() -> None:
    """Refused though rows are independent: Reshape(lo, Shape(lo)); which of the Shape's entries is
    the batch's the load cannot tell without a rank."""
    nodes = [growing_loop("lo"), node("Shape", ["lo"], "sh"), node("Reshape", ["lo", "sh"], "y")]
    model = graph_model(nodes, list(ONCE), shape=("N", 3))
    assert rows_independent(model)
    assert "as a shape, a size or a count" in row_mixing_outputs(model).get("y", "")


def test_a_slice_to_a_length_made_from_the_batchs_does_not_keep_every_row() -> None:
    """x[:len(x[1:])]: N - 1 rows, its bound held where the batch's size would be (the position
    Shape(x[1:]) holds is N - 1, not N)."""
    nodes = [
        node("Slice", ["x", "one", "end", "axis0"], "rest"),
        node("Shape", ["rest"], "sh"),
        node("Gather", ["sh", "zero"], "n"),
        node("Slice", ["x", "zero", "n", "axis0"], "y"),
    ]
    inits = [ints("one", [1]), ints("end", [1 << 40]), ints("axis0", [0]), ints("zero", [0])]
    why = row_mixing_outputs(graph_model(nodes, inits, shape=("N", 3))).get("y", "")
    assert "its bounds are computed at run time" in why, why


def _divided_by_first_length(carried: str) -> list[onnx.NodeProto]:
    """A body's step: `carried`_in divided by its first length (`first` an initializer, 0)."""
    return [
        node("Shape", [f"{carried}_in"], "sh"),
        node("Gather", ["sh", "first"], "n", axis=0),
        node("Cast", ["n"], "nf", to=onnx.TensorProto.FLOAT),
        node("Div", [f"{carried}_in", "nf"], f"{carried}_out"),
    ]


def _body(
    nodes: list[onnx.NodeProto],
    carried: list[tuple[str, list[int] | None]],
    turns: bool,
    given: tuple[list[str] | None, ...] = (),
) -> onnx.GraphProto:
    """A Loop's body (`turns`: its count and condition first) or a Scan's, its carried values
    `carried` (name, declared shape or None) in and out (`name`_in, `name`_out; an output with no
    declared shape gets `given`'s: onnxruntime's Scan needs one)."""
    f, ins, outs = onnx.TensorProto.FLOAT, [], []
    if turns:
        ins = [
            helper.make_tensor_value_info("turn", onnx.TensorProto.INT64, []),
            helper.make_tensor_value_info("go", onnx.TensorProto.BOOL, []),
        ]
        outs = [helper.make_tensor_value_info("go_out", onnx.TensorProto.BOOL, [])]
        nodes = [helper.make_node("Identity", ["go"], ["go_out"]), *nodes]
    ins += [helper.make_tensor_value_info(f"{name}_in", f, shape) for name, shape in carried]
    outs += [
        helper.make_tensor_value_info(f"{name}_out", f, shape or out)
        for (name, shape), out in zip(carried, given or (None,) * len(carried), strict=True)
    ]
    return helper.make_graph(nodes, "body", ins, outs)


def test_a_loops_second_output_of_no_known_rank_made_from_the_batch_is_read() -> None:
    """A Loop carrying a table, then x: x / Shape(its second output)[0]."""
    body = _body(
        [
            helper.make_node("Identity", ["a_in"], ["a_out"]),
            helper.make_node("Identity", ["b_in"], ["b_out"]),
        ],
        [("a", [2, 3]), ("b", None)],
        turns=True,
    )
    table = numpy_helper.from_array(np.ones((2, 3), np.float32), "table")
    made = [helper.make_node("Loop", ["once", "go", "table", "x"], ["kept", "t"], body=body)]
    model = divided_by_length(made, 0, (*ONCE, table))
    assert not rows_independent(model)
    assert SIZE_AS_VALUE in row_mixing_outputs(model).get("y", "")


def test_a_length_read_in_a_scans_body_over_such_an_output_mixes_rows() -> None:
    """A Scan whose state is Loop(x) (no known rank) divides it by its first length each step."""
    body = _body(
        [*_divided_by_first_length("s"), helper.make_node("Identity", ["step_in"], ["step_out"])],
        [("s", None), ("step", [3])],
        turns=False,
        given=(["n", "w"], None),
    )
    steps = numpy_helper.from_array(np.ones((2, 3), np.float32), "steps")
    scan = helper.make_node("Scan", ["lo", "steps"], ["y", "stacked"], body=body, num_scan_inputs=1)
    model = graph_model([carried_once("x", "lo"), scan], [*ONCE, steps, ints("first", 0)], shape=("N", 3))
    assert not rows_independent(model)
    assert "made from the batch's size by the Shape node making 'sh'" in row_mixing_outputs(model).get(
        "y", ""
    )


def test_the_size_of_an_if_of_two_ranks_made_from_the_batch_mixes_rows() -> None:
    """x / Size(If(x, Unsqueeze(x))): 3N whichever branch. (A Shape's first entry of it, read so,
    stays open: Silero VAD compares such an If's entries.)"""
    f = onnx.TensorProto.FLOAT
    kept = helper.make_graph(
        [node("Identity", ["x"], "a")], "kept", [], [helper.make_tensor_value_info("a", f, None)]
    )
    grown = helper.make_graph(
        [node("Unsqueeze", ["x", "axes"], "b")], "grown", [], [helper.make_tensor_value_info("b", f, None)]
    )
    nodes = [
        helper.make_node("If", ["cond"], ["t"], then_branch=kept, else_branch=grown),
        node("Size", ["t"], "n"),
        node("Cast", ["n"], "nf", to=f),
        node("Div", ["x", "nf"], "y"),
    ]
    cond = numpy_helper.from_array(np.array(True), "cond")
    model = graph_model(nodes, [cond, ints("axes", [0])], shape=("N", 3))
    assert not rows_independent(model)
    assert "made from the batch's size by the Size node making 'n'" in row_mixing_outputs(model).get("y", "")


@pytest.mark.parametrize("fed", ["x", "g"], ids=["after one that grows", "after one fed no shape"])
def test_a_loop_value_that_keeps_its_shape_after_one_that_does_not_is_given_it(fed: str) -> None:
    """A Loop carrying a (joined to itself: no shape; fed `fed`, x or a growing Loop's output of no
    shape) and b (kept): b is x's [N, 3], its second length 3 whatever the batch (each carried
    value is read)."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["go"], ["go_out"]),
            node("Concat", ["a_in", "a_in"], "a_out", axis=1),
            node("Identity", ["b_in"], "b_out"),
        ],
        "body",
        [
            helper.make_tensor_value_info("turn", onnx.TensorProto.INT64, []),
            helper.make_tensor_value_info("go", onnx.TensorProto.BOOL, []),
            helper.make_tensor_value_info("a_in", onnx.TensorProto.FLOAT, None),
            helper.make_tensor_value_info("b_in", onnx.TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("go_out", onnx.TensorProto.BOOL, []),
            helper.make_tensor_value_info("a_out", onnx.TensorProto.FLOAT, None),
            helper.make_tensor_value_info("b_out", onnx.TensorProto.FLOAT, None),
        ],
    )
    loop = helper.make_node("Loop", ["once", "go", fed, "x"], ["grown", "t"], body=body)
    model = divided_by_length([growing_loop("g"), loop], 1, tuple(ONCE))
    assert rows_independent(model)
    assert row_mixing_outputs(model) == {}
