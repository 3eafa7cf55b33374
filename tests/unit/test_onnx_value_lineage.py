"""A fourth tester's review (session 58, u2), both also so at a1132d6: a Loop run Shape(x)[1] times
built a [4, 1] table that x + t broadcast the batch against, read as made from the batch through
x's shape (batched, wrong, OK); Concat(c, x) with c a constant a Loop returns, its shape unknown,
read no rank (batched, every batched request INTERNAL). The served cases are in
scripts/unread_cases.py (tests/integration/test_size_count_sweep.py); these read the pieces."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from server.backends.onnx_broadcast_pairs import concat_pinned
from server.backends.onnx_partial_ints import Made, PartialInts
from server.backends.onnx_row_mixing import row_mixing_outputs
from server.backends.onnx_value_lineage import ValueLineage

F, I64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
N = helper.make_node
UNTOLD = "against a length the load cannot tell of axis 0 of 't'"


def _ints(name: str, values: list[int] | int) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


INITS = [
    _ints("i0", 0),
    _ints("i1", 1),
    _ints("four", 4),
    _ints("z0", [0]),
    _ints("z1", [1]),
    _ints("z2", [2]),
]


def _model(nodes: list[onnx.NodeProto], x: list[int | str] | None = None) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", F, x or ["N", 4])],
        [helper.make_tensor_value_info("y", F, x or ["N", 4])],
        INITS,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _body(nodes: list[onnx.NodeProto], made: str) -> onnx.GraphProto:
    """A Loop's body returning `made` each turn (a scan output), its turn number as 'turn'."""
    given = [
        helper.make_tensor_value_info("turn", I64, []),
        helper.make_tensor_value_info("cond_in", BOOL, []),
    ]
    out = [helper.make_tensor_value_info("cond_out", BOOL, []), helper.make_tensor_value_info(made, F, None)]
    return helper.make_graph([N("Identity", ["cond_in"], ["cond_out"]), *nodes], "body", given, out)


# Its turn number as a [1] float: stacked, t[i] = i.
TURNS = _body([N("Cast", ["turn"], ["tf"], to=F), N("Unsqueeze", ["tf", "z0"], ["row"])], "row")
SHAPE = N("Shape", ["x"], ["s"])
COUNTS = {  # a trip count of 4, x's axis 1's length, read from x's shape
    "gather_1": [SHAPE, N("Gather", ["s", "i1"], ["k"])],
    "shape_start_1": [N("Shape", ["x"], ["s1"], start=1), N("Squeeze", ["s1"], ["k"])],
    "slice_from_1": [SHAPE, N("Slice", ["s", "z1", "z2"], ["s1"]), N("Squeeze", ["s1"], ["k"])],
    "sum_of_lengths": [SHAPE, N("Gather", ["s", "i1"], ["k2"]), N("Add", ["k2", "i0"], ["k"])],
}
FIRST_ROWS = [SHAPE, N("Gather", ["s", "i0"], ["n"]), N("Unsqueeze", ["n", "z0"], ["n1"])]


@pytest.mark.parametrize("count", sorted(COUNTS))
def test_a_table_a_loop_stacks_as_long_as_another_axis_is_not_made_from_the_batch(count: str) -> None:
    # x + t ([N, 4] + [4, 1]) then x[:N]: a batch of 4 gave row i t's row i, alone t's row 0, OK.
    table = [*COUNTS[count], N("Loop", ["k", ""], ["t"], body=TURNS), N("Add", ["x", "t"], ["z"])]
    served = _model([*table, *FIRST_ROWS, N("Slice", ["z", "z0", "n1", "z0"], ["y"])])
    assert "y" in row_mixing_outputs(served)  # {} at 8906ad9
    assert UNTOLD in row_mixing_outputs(_model([*table, N("Identity", ["z"], ["y"])]))["y"]


def test_a_table_of_a_named_axis_or_built_in_the_body_is_not_made_from_the_batch() -> None:
    # x [N, T]: T is each request's own (requests batch only of one T), never the batch's.
    table = [SHAPE, N("Gather", ["s", "i1"], ["k"]), N("Loop", ["k", ""], ["t"], body=TURNS)]
    named = _model([*table, N("Add", ["x", "t"], ["y"])], x=["N", "T"])
    assert UNTOLD in row_mixing_outputs(named)["y"]
    # Four turns, each a [1] of x's length on axis 1 read inside the body: a [4, 1] table too.
    inside = _body([N("Shape", ["x"], ["inner_s"], start=1), N("Cast", ["inner_s"], ["v"], to=F)], "v")
    built = _model([N("Loop", ["four", ""], ["t"], body=inside), N("Add", ["x", "t"], ["y"])])
    assert UNTOLD in row_mixing_outputs(built)["y"]


def test_the_same_table_across_each_row_is_batched() -> None:
    table = [*COUNTS["gather_1"], N("Loop", ["k", ""], ["t"], body=TURNS)]
    across = _model([*table, N("Transpose", ["t"], ["tt"], perm=[1, 0]), N("Add", ["x", "tt"], ["y"])])
    flat = _model([*table, N("Squeeze", ["t", "z1"], ["t1"]), N("Add", ["x", "t1"], ["y"])])
    assert row_mixing_outputs(across) == {} and row_mixing_outputs(flat) == {}
    ones = N("ConstantOfShape", ["s"], ["c"], value=numpy_helper.from_array(np.ones(1, np.float32)))
    assert row_mixing_outputs(_model([SHAPE, ones, N("Add", ["x", "c"], ["y"])])) == {}  # [N, 4]: whole


def test_a_table_as_long_as_the_batch_or_its_size_is_still_refused() -> None:
    # Shape(x)[0] turns, or Size(x) / 4: t[i] = i is a row's place in the batch.
    by_rows = [SHAPE, N("Gather", ["s", "i0"], ["k"])]
    by_size = [N("Size", ["x"], ["sz"]), N("Div", ["sz", "four"], ["k"])]
    for count in (by_rows, by_size):
        model = _model([*count, N("Loop", ["k", ""], ["t"], body=TURNS), N("Add", ["x", "t"], ["y"])])
        assert "takes the batch's size as a value" in row_mixing_outputs(model)["y"]


def test_a_loop_carrying_x_stays_made_from_x() -> None:
    # Its body input carries the batch: its output is x's (not free), the Add per row.
    given = [helper.make_tensor_value_info(n, t, []) for n, t in (("turn", I64), ("cond_in", BOOL))]
    given.append(helper.make_tensor_value_info("c_in", F, None))
    out = [
        helper.make_tensor_value_info("cond_out", BOOL, []),
        helper.make_tensor_value_info("c_out", F, None),
    ]
    nodes = [N("Identity", ["cond_in"], ["cond_out"]), N("Add", ["c_in", "c_in"], ["c_out"])]
    body = helper.make_graph(nodes, "body", given, out)
    model = _model([N("Loop", ["four", "", "x"], ["c"], body=body), N("Add", ["x", "c"], ["y"])])
    assert row_mixing_outputs(model) == {}


def _lineage(known: dict[str, object], makers: dict[str, onnx.NodeProto]) -> tuple[ValueLineage, PartialInts]:
    values = ValueLineage(lambda name: frozenset({name}) if name.startswith("in_") else frozenset(), makers)
    values.told = frozenset({"T"})
    partial = PartialInts()
    partial.known = {name: np.array(entries, dtype=object) for name, entries in known.items()}
    return values, partial


def test_value_lineage_counts_only_lengths_of_told_axes_not_the_batchs() -> None:
    known = {"fixed": [4], "named": ["T"], "sum": [Made(frozenset({"T"}))], "batch": [4, "N"]}
    known |= {"made": ["unk__2"], "mixed": [Made(frozenset({"N", "T"}))], "computed": [None], "none": []}
    makers = {name: N("Shape", ["in_x"], [name]) for name in known}
    values, partial = _lineage(known, makers)
    for name in known:
        values.see(N("Identity", ["in_x"], [name]), partial, {"N"}, lambda name: None, ())
    assert values.apart == {"fixed", "named", "sum", "none"}
    assert values.of("named") == frozenset() and values.of("batch") == frozenset({"in_x"})
    assert values.of("in_x") == frozenset({"in_x"})  # no maker: its whole lineage


def test_value_lineage_follows_a_walked_body_by_what_it_returns_else_what_it_reads() -> None:
    inside = _body([N("Shape", ["in_x"], ["inner"], start=1), N("Cast", ["inner"], ["v"], to=F)], "v")
    loop = N("Loop", ["four", ""], ["t"], body=inside)
    makers = {"t": loop}
    values, _ = _lineage({}, makers)
    assert values.of("t") == frozenset({"in_x"})  # its body not walked: what it reads
    makers |= {name: node for node in inside.node for name in node.output}
    values, _ = _lineage({}, makers)
    values.apart.add("inner")
    assert values.of("t") == frozenset()
    cycle = {"a": N("Add", ["b", "in_y"], ["a"]), "b": N("Neg", ["a"], ["b"])}
    values, _ = _lineage({}, cycle)
    assert values.of("a") == frozenset({"in_y"})  # a cycle ends (the open one's whole lineage: none)


@pytest.mark.parametrize("axis", [1, -1])
def test_a_concat_pinning_the_batch_to_a_loops_constant_of_unknown_shape_is_refused(axis: int) -> None:
    # A carried [1, 2] the body replaces by a constant: onnx gives the Loop's output no shape.
    given = [helper.make_tensor_value_info(n, t, []) for n, t in (("turn", I64), ("cond_in", BOOL))]
    given.append(helper.make_tensor_value_info("c_in", F, None))
    out = [
        helper.make_tensor_value_info("cond_out", BOOL, []),
        helper.make_tensor_value_info("kept", F, None),
    ]
    value = numpy_helper.from_array(np.array([[7, 8]], np.float32), "seven")
    nodes = [N("Identity", ["cond_in"], ["cond_out"]), N("Constant", [], ["kept"], value=value)]
    loop = N("Loop", ["four", "", "c0"], ["c"], body=helper.make_graph(nodes, "body", given, out))
    for order in (["c", "x"], ["x", "c"]):  # c first had read its rank as none: batched, INTERNAL
        model = _model([loop, N("Concat", order, ["y"], axis=axis)], x=["N", 2])
        model.graph.initializer.append(numpy_helper.from_array(np.zeros((1, 2), np.float32), "c0"))
        assert "joins axis 0 of 'x' ['N', 2] to 'c' (its shape unknown)" in row_mixing_outputs(model)["y"]


def test_concat_pinned_reads_the_rank_of_any_input() -> None:
    node = N("Concat", ["c", "x"], ["y"], axis=1)
    where = lambda i, a: f"{i}:{a}"  # noqa: E731
    assert concat_pinned(node, [[], ["N", 2]], {"N"}, where, [True, False]) is not None
    assert concat_pinned(node, [[], ["N", 2]], {"N"}, where, [False, False]) is None  # made from x
    assert concat_pinned(node, [["N", 3], ["N", 2]], {"N"}, where, [False, False]) is None


def test_a_chain_from_a_length_apart_is_made_from_nothing_however_deep() -> None:
    """Each tensor on the way is worked out after its sources (a mutation survivor, session 59:
    sources pushed as already expanded took the whole lineage of a source not yet worked out)."""
    makers = {"c": N("Shape", ["in_x"], ["c"], start=1)}
    makers |= {"b": N("Cast", ["c"], ["b"], to=F), "a": N("Unsqueeze", ["b", "axes"], ["a"])}
    whole = {"a": {"in_x"}, "b": {"in_x"}, "c": {"in_x"}, "in_x": {"in_x"}}  # through the Shape
    values = ValueLineage(lambda name: frozenset(whole.get(name, ())), makers)
    values.apart.add("c")
    assert values.of("a") == frozenset()
    assert values.of("b") == frozenset() and values.of("c") == frozenset()
