"""server/backends/int_division_guard.py: what the first mutation run (343/422) showed untested.

Which nodes are guarded (ONNX's Div/Mod only, in either spelling of the default domain), which
divisors count as constants with no zero (Constant's value_int, value_ints, value, sparse_value;
initializers in external data), how element types are found (initializers, Constant nodes onnx
cannot infer), and the exact refusal and WARNING texts an operator reads. Every run here divides
only by nonzero values or through the guard, so it is safe on any onnxruntime."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from server.backends.int_division_guard import (
    BY_ZERO,
    OVERFLOW,
    RESERVED_PREFIX,
    DivisionGuard,
    GuardUnavailable,
    division_guard_for,
    guard_model,
)
from server.backends.int_division_rewrite import graphs
from server.errors import ModelRefusedInput
from tests.support.division_models import int_div

LOGGER = "server.backends.int_division_guard"
# A 32/64-bit signed Div gets two flags, both naming it: a zero divisor, then MIN / -1.
DIV_FAULTS = (BY_ZERO, OVERFLOW)
CUSTOM = "com.example"  # a domain onnx knows no schema of: its nodes' outputs have no inferred type


def _value(name: str, elem: int, dims: list[int | str] | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, dims)


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    *,
    initializer: list[onnx.TensorProto] | None = None,
    opsets: dict[str, int] | None = None,
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=initializer or [])
    imports = [helper.make_opsetid(domain, version) for domain, version in (opsets or {"": 13}).items()]
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = 8  # onnxruntime 1.31 loads IR 13 at most (see division_models.save)
    return model


def _int64_div(divisor_node: onnx.NodeProto, opsets: dict[str, int] | None = None) -> onnx.ModelProto:
    """q = x / c (int64 [2], node 'D'), c made by `divisor_node`."""
    return _model(
        [divisor_node, helper.make_node("Div", ["x", "c"], ["q"], name="D")],
        [_value("x", TensorProto.INT64, [2])],
        [_value("q", TensorProto.INT64, [2])],
        opsets=opsets,
    )


def _run(guard: DivisionGuard, feed: dict[str, np.ndarray]) -> tuple[list[np.ndarray], list[int]]:
    """The model's own outputs, then each flag's zero count."""
    session = ort.InferenceSession(guard.model_bytes, providers=["CPUExecutionProvider"])
    own = [o.name for o in session.get_outputs() if o.name not in guard.flags]
    values = session.run([*own, *guard.flags], feed)
    return values[: len(own)], [int(v) for v in values[len(own) :]]


def _counts(*zeros: int) -> list[np.ndarray]:
    """Flag values as a run returns them: 0-d INT64 arrays."""
    return [np.asarray(count, np.int64) for count in zeros]


def _two_node_guard() -> DivisionGuard:
    return DivisionGuard(b"", ("f0", "f1"), ("Div_3", "Mod_int64"), (BY_ZERO, BY_ZERO))


# DivisionGuard.check: the refusal and its one WARNING line


def test_check_logs_by_default_one_warning_naming_the_model_and_node(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER), pytest.raises(ModelRefusedInput):
        _two_node_guard().check("div", _counts(2, 0))
    (record,) = caplog.records
    assert (
        record.getMessage() == "model div: refused a batch's inputs: integer division by zero in node 'Div_3'"
    )


def test_check_names_every_node_that_met_a_zero_comma_separated() -> None:
    with pytest.raises(ModelRefusedInput) as refused:
        _two_node_guard().check("div", _counts(1, 3), log_it=False)
    assert str(refused.value) == "model 'div': integer division by zero in node 'Div_3', 'Mod_int64'"


def test_check_groups_the_nodes_by_fault_one_clause_each() -> None:
    """One node met both faults: each fault its own clause, in flag order, '; ' between."""
    guard = DivisionGuard(b"", ("f0", "f1", "f2"), ("D", "D", "E"), (BY_ZERO, OVERFLOW, BY_ZERO))
    with pytest.raises(ModelRefusedInput) as refused:
        guard.check("div", _counts(1, 1, 2), log_it=False)
    assert str(refused.value) == (f"model 'div': {BY_ZERO} in node 'D', 'E'; {OVERFLOW} in node 'D'")


def test_check_refuses_counts_that_do_not_match_its_flags() -> None:
    """A count missing (a fetch that lost a flag) is a bug to surface, never a divisor read as safe."""
    with pytest.raises(ValueError, match="zip"):
        _two_node_guard().check("div", _counts(0), log_it=False)


# division_guard_for: the WARNING of a model left unguarded


def test_the_unguarded_warning_names_the_model_the_runtime_and_the_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = int_div(tmp_path / "old.onnx", opset=6)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert division_guard_for(path, "old", "1.23.2") is None
    (record,) = caplog.records
    assert record.getMessage() == (
        "model old: integer Div/Mod left unguarded (onnxruntime 1.23.2 ends the process on a zero "
        "divisor or MIN / -1; a request with one will end this server): opset 6 is older than the "
        "guard's nodes (opset 7 or newer is needed)"
    )


def test_opset_9_the_first_with_where_is_guarded_and_runs(tmp_path: Path) -> None:
    guard = guard_model(onnx.load(str(int_div(tmp_path / "nine.onnx", opset=9))))
    assert guard is not None and guard.nodes == ("Div_xy", "Div_xy") and guard.faults == DIV_FAULTS
    minimum = np.iinfo(np.int32).min
    feed = {"x": np.asarray([6, 6, minimum], np.int32), "y": np.asarray([-2, 0, -1], np.int32)}
    outputs, counts = _run(guard, feed)  # opset 9's Equal, And, Or, Where and ReduceSum all run
    assert counts == [1, 1] and outputs[0].tolist() == [-3, 6, minimum]


def _custom_node_over_a_division(kind: str) -> onnx.ModelProto:
    """r = A(x), A a custom op whose subgraph divides the outer int64 x by itself: one `body`, a graph
    list, or If's two attribute names (`then_branch`, `else_branch`) on an op that is not If."""
    body = helper.make_graph(
        [helper.make_node("Div", ["x", "x"], ["q"], name="D")],
        "body",
        [],
        [_value("q", TensorProto.INT64, [2])],
    )
    node = helper.make_node("A", ["x"], ["r"], domain=CUSTOM, name="A")
    if kind == "list":
        node.attribute.append(helper.make_attribute("bodies", [body]))
    elif kind == "branches":
        node.attribute.extend(helper.make_attribute(name, body) for name in ("then_branch", "else_branch"))
    else:
        node.attribute.append(helper.make_attribute("body", body))
    return _model(
        [node],
        [_value("x", TensorProto.INT64, [2])],
        [_value("r", TensorProto.INT64, [2])],
        opsets={"": 13, CUSTOM: 1},
    )


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("body", "node 'A' (A) has integer divisions in its subgraph"),
        ("branches", "node 'A' (A) has integer divisions in its subgraph"),
        ("list", "node 'A' (A) has divisions in a graph list"),
    ],
)
def test_the_reasons_a_model_cannot_be_guarded_are_stated_exactly(kind: str, reason: str) -> None:
    """Only If, Loop and Scan bodies can pass their counts out (an If by its op, not by its
    attributes' names); another op's subgraph, or a graph list, is refused by name. (External data
    and a taken prefix, refused before, are now guarded.)"""
    with pytest.raises(GuardUnavailable) as err:
        guard_model(_custom_node_over_a_division(kind))
    assert str(err.value) == reason


def test_a_graph_list_without_divisions_does_not_stop_the_guard() -> None:
    """Only a graph list holding a division is refused; the model's own Div is still guarded."""
    empty = helper.make_graph([helper.make_node("Identity", ["x"], ["i"])], "empty", [], [])
    other = helper.make_node("A", ["x"], ["r"], domain=CUSTOM, name="A")
    other.attribute.append(helper.make_attribute("bodies", [empty]))
    model = _model(
        [other, helper.make_node("Div", ["x", "y"], ["q"], name="D")],
        [_value("x", TensorProto.INT64, [2]), _value("y", TensorProto.INT64, [2])],
        [_value("q", TensorProto.INT64, [2]), _value("r", TensorProto.INT64, [2])],
        opsets={"": 13, CUSTOM: 1},
    )
    guard = guard_model(model)
    assert guard is not None and guard.nodes == ("D", "D")


def test_an_external_initializer_divisor_is_not_taken_for_a_constant_with_no_zero(tmp_path: Path) -> None:
    """Its values are not read at load: it may hold a zero (or -1), so its node is guarded."""
    weights = numpy_helper.from_array(np.asarray([2, 4], np.int64), "c")
    model = _model(
        [helper.make_node("Div", ["x", "c"], ["q"], name="D")],
        [_value("x", TensorProto.INT64, [2])],
        [_value("q", TensorProto.INT64, [2])],
        initializer=[weights],
    )
    path = tmp_path / "ext" / "m.onnx"
    path.parent.mkdir()
    onnx.save(model, str(path), save_as_external_data=True, size_threshold=0, location="w.bin")
    guard = guard_model(onnx.load(str(path), load_external_data=False))
    assert guard is not None and guard.nodes == ("D", "D") and guard.faults == DIV_FAULTS


# Which nodes are guarded, and their names in messages


@pytest.mark.parametrize(("graph_name", "place"), [("g", "g"), ("", "a graph")])
def test_an_unnamed_node_is_named_by_its_op_and_place_in_the_graph(graph_name: str, place: str) -> None:
    model = _model(
        [
            helper.make_node("Identity", ["x"], ["x2"]),
            helper.make_node("Mod", ["x2", "y"], ["r"]),
        ],
        [_value("x", TensorProto.INT32, [2]), _value("y", TensorProto.INT32, [2])],
        [_value("r", TensorProto.INT32, [2])],
    )
    model.graph.name = graph_name
    label = f"Mod (unnamed, node 1 of {place})"
    guard = guard_model(model)  # a Mod gets no overflow flag: x mod -1 is divided as x mod 1
    assert guard is not None and guard.nodes == (label,) and guard.faults == (BY_ZERO,)
    with pytest.raises(ModelRefusedInput, match=re.escape(f"node '{label}'")):
        guard.check(
            "m",
            _counts(*_run(guard, {"x": np.asarray([5, 5], np.int32), "y": np.asarray([0, 2], np.int32)})[1]),
        )


@pytest.mark.parametrize(("op", "domain"), [("Add", ""), ("Mul", ""), ("Div", CUSTOM)])
def test_only_onnx_div_and_mod_are_divisions(op: str, domain: str) -> None:
    """An integer Add takes two inputs too; a custom domain's 'Div' is not ONNX's."""
    model = _model(
        [helper.make_node(op, ["x", "y"], ["q"], domain=domain, name="N")],
        [_value("x", TensorProto.INT64, [2]), _value("y", TensorProto.INT64, [2])],
        [_value("q", TensorProto.INT64, [2])],
        opsets={"": 13, CUSTOM: 1},
    )
    assert guard_model(model) is None


@pytest.mark.parametrize("node_domain", ["", "ai.onnx"])
def test_the_default_domain_spelled_ai_onnx_is_guarded_and_runs(node_domain: str) -> None:
    """'ai.onnx' is the default domain's other name, for a node's domain and for the opset import."""
    model = _model(
        [helper.make_node("Div", ["x", "y"], ["q"], domain=node_domain, name="D")],
        [_value("x", TensorProto.INT32, [3]), _value("y", TensorProto.INT32, [3])],
        [_value("q", TensorProto.INT32, [3])],
        opsets={"ai.onnx": 17},
    )
    guard = guard_model(model)
    assert guard is not None and guard.nodes == ("D", "D") and guard.faults == DIV_FAULTS
    outputs, counts = _run(
        guard, {"x": np.asarray([4, 4, 4], np.int32), "y": np.asarray([2, 0, 1], np.int32)}
    )
    assert counts == [1, 0] and outputs[0].tolist() == [2, 4, 4]


# Constant divisors: which are known to hold no zero


def _constant(**value: Any) -> onnx.NodeProto:
    return helper.make_node("Constant", [], ["c"], **value)


@pytest.mark.parametrize(
    ("value", "guarded"),
    [
        ({"value_int": 1}, False),
        ({"value_int": 0}, True),
        ({"value_int": -1}, True),  # int64: MIN / -1 traps
        ({"value_ints": [1, 2]}, False),
        ({"value_ints": [1, 0]}, True),
        ({"value": numpy_helper.from_array(np.asarray([1, 0], np.int64))}, True),
        ({"value": numpy_helper.from_array(np.asarray([1, 2], np.int64))}, False),
    ],
    ids=["int_1", "int_0", "int_minus_1", "ints_1_2", "ints_1_0", "tensor_1_0", "tensor_1_2"],
)
def test_a_constant_node_divisor_is_guarded_exactly_when_it_holds_a_zero(
    value: dict[str, Any], guarded: bool
) -> None:
    guard = guard_model(_int64_div(_constant(**value)))
    assert (guard is not None) is guarded
    if guard is not None:
        assert guard.nodes == ("D", "D") and guard.faults == DIV_FAULTS


def test_a_sparse_constant_divisor_is_guarded_its_implicit_zeros_counted() -> None:
    """[0, 5] with only the 5 stored: the zero is implicit, never read as 'no zero'."""
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.asarray([5], np.int64), "values"),
        numpy_helper.from_array(np.asarray([1], np.int64), "indices"),
        [2],
    )
    guard = guard_model(_int64_div(_constant(sparse_value=sparse)))
    assert guard is not None and guard.nodes == ("D", "D") and guard.faults == DIV_FAULTS
    outputs, counts = _run(guard, {"x": np.asarray([10, 10], np.int64)})
    assert counts == [1, 0] and outputs[0].tolist() == [10, 2]


def test_a_constant_in_the_ai_onnx_spelling_with_no_zero_is_left_alone() -> None:
    constant = helper.make_node(
        "Constant", [], ["c"], domain="ai.onnx", value=numpy_helper.from_array(np.asarray([2, 3], np.int64))
    )
    assert guard_model(_int64_div(constant, opsets={"ai.onnx": 13})) is None


def test_a_custom_domains_constant_is_not_taken_for_a_known_value() -> None:
    """Only ONNX's Constant is fixed at load; another domain's op of that name may make anything."""
    constant = helper.make_node(
        "Constant", [], ["c"], domain=CUSTOM, value=numpy_helper.from_array(np.asarray([2, 3], np.int64))
    )
    guard = guard_model(_int64_div(constant, opsets={"": 13, CUSTOM: 1}))
    assert guard is not None and guard.nodes == ("D", "D") and guard.faults == DIV_FAULTS


# Element types: through initializers and Constant values; unknown ones are said


def test_an_initializer_types_a_division_that_has_no_other_typed_value() -> None:
    """q = w / table[idx]: the dividend and the table are initializers; q is no graph output."""
    model = _model(
        [
            helper.make_node("Gather", ["table", "idx"], ["d"]),
            helper.make_node("Div", ["w", "d"], ["q"], name="D"),
            helper.make_node("Identity", ["q"], ["out"]),
        ],
        [_value("idx", TensorProto.INT64, [2])],
        [_value("out", TensorProto.INT32, [2])],
        initializer=[
            numpy_helper.from_array(np.asarray([6, 8], np.int32), "w"),
            numpy_helper.from_array(np.asarray([0, 2, 4], np.int32), "table"),
        ],
    )
    guard = guard_model(model)
    assert guard is not None and guard.nodes == ("D", "D") and guard.faults == DIV_FAULTS
    outputs, counts = _run(guard, {"idx": np.asarray([1, 0], np.int64)})
    assert counts == [1, 0] and outputs[0].tolist() == [3, 8]


def _untyped(name: str) -> onnx.NodeProto:
    return helper.make_node("Make", [], [name], domain=CUSTOM)


@pytest.mark.parametrize("output", ["undefined", "no_type"])
def test_a_division_of_unknown_type_is_refused_by_name(output: str) -> None:
    """An output declared with elem_type UNDEFINED is no type either: never read as 'not an integer'."""
    q = _value("q", TensorProto.UNDEFINED, None) if output == "undefined" else onnx.ValueInfoProto(name="q")
    model = _model(
        [_untyped("x"), _untyped("y"), helper.make_node("Div", ["x", "y"], ["q"])],
        [],
        [q],
        opsets={"": 13, CUSTOM: 1},
    )
    with pytest.raises(GuardUnavailable) as err:
        guard_model(model)
    assert str(err.value) == "the type of node 'Div (unnamed, node 2 of g)' is not known"


@pytest.mark.parametrize(
    ("domain", "op", "typed"), [("", "Constant", True), (CUSTOM, "Constant", False), (CUSTOM, "Fill", False)]
)
def test_only_onnxs_constant_types_a_division_whose_other_values_are_untyped(
    domain: str, op: str, typed: bool
) -> None:
    """q = c / y, y from a domain onnx cannot infer: ONNX's Constant types c (and so the Div); a
    custom domain's op, even one named Constant, says nothing of its output's type whatever its
    'value' attribute holds (the merged code reads a Constant only in the default domain)."""
    made = helper.make_node(
        op, [], ["c"], domain=domain, value=numpy_helper.from_array(np.asarray([2], np.int64))
    )
    model = _model(
        [made, _untyped("y"), helper.make_node("Div", ["c", "y"], ["q"], name="D")],
        [],
        [onnx.ValueInfoProto(name="q")],
        opsets={"": 13, CUSTOM: 1},
    )
    if typed:
        guard = guard_model(model)
        assert guard is not None and guard.nodes == ("D", "D") and guard.faults == DIV_FAULTS
    else:
        with pytest.raises(GuardUnavailable, match="the type of node 'D' is not known"):
            guard_model(model)


# The new modules: int_division_nodes.py (narrow types) and int_division_rewrite.py (bodies, names)


@pytest.mark.parametrize(("values", "guarded"), [([-1, 2], False), ([0, 2], True)])
def test_a_narrow_constant_divisor_is_guarded_for_zero_only(values: list[int], guarded: bool) -> None:
    """int16 is divided as int, so its -1 never overflows: a constant -1 is safe, a 0 is not."""
    constant = _constant(value=numpy_helper.from_array(np.asarray(values, np.int16)))
    model = _model(
        [constant, helper.make_node("Div", ["x", "c"], ["q"], name="D")],
        [_value("x", TensorProto.INT16, [2])],
        [_value("q", TensorProto.INT16, [2])],
    )
    guard = guard_model(model)
    assert (guard is not None) is guarded
    if guard is not None:
        assert guard.nodes == ("D",) and guard.faults == (BY_ZERO,)


def _graph_names(graph: onnx.GraphProto) -> tuple[set[str], set[str]]:
    """Node names and value names of `graph` and its subgraphs (node names may be '')."""
    nodes: set[str] = set()
    values: set[str] = set()
    for g in graphs(graph):
        values.update(v.name for v in (*g.input, *g.output, *g.initializer))
        for node in g.node:
            nodes.add(node.name)
            values.update(node.output)
    return nodes, values


def _if_model(taken: list[str]) -> onnx.ModelProto:
    """q = If(cond, then: x / y, else: x); `taken` names Identity nodes of the model's own."""
    then = helper.make_graph(
        [helper.make_node("Div", ["x", "y"], ["t"], name="D")],
        "then",
        [],
        [_value("t", TensorProto.INT64, [2])],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["e"], name="E")],
        "else",
        [],
        [_value("e", TensorProto.INT64, [2])],
    )
    own = [helper.make_node("Identity", ["x"], [f"x_{i}"], name=name) for i, name in enumerate(taken)]
    return _model(
        [*own, helper.make_node("If", ["cond"], ["q"], name="I", then_branch=then, else_branch=other)],
        [
            _value("cond", TensorProto.BOOL, []),
            _value("x", TensorProto.INT64, [2]),
            _value("y", TensorProto.INT64, [2]),
        ],
        [_value("q", TensorProto.INT64, [2])],
    )


@pytest.mark.parametrize(
    ("taken", "prefix"),
    [
        ([], RESERVED_PREFIX),
        ([f"{RESERVED_PREFIX}a", f"{RESERVED_PREFIX[:-1]}1/a"], f"{RESERVED_PREFIX[:-1]}2/"),
    ],
)
def test_every_node_and_value_the_guard_adds_is_named_under_a_free_reserved_prefix(
    taken: list[str], prefix: str
) -> None:
    """In the If's branches too (the else branch's Constant 0): named nodes, so an onnxruntime error
    or profile points at the guard, and names no model uses (the first free numbered prefix)."""
    model = _if_model(taken)
    own_nodes, own_values = _graph_names(model.graph)
    guard = guard_model(model)
    assert guard is not None and guard.nodes == ("D (in I)", "D (in I)")
    guarded = onnx.load_from_string(guard.model_bytes)
    nodes, values = _graph_names(guarded.graph)
    assert (added_nodes := nodes - own_nodes) and (added_values := values - own_values)
    assert all(name.startswith(prefix) for name in added_nodes | added_values)
    feed = {"cond": np.asarray(True), "x": np.asarray([6, 6], np.int64), "y": np.asarray([3, 0], np.int64)}
    outputs, counts = _run(guard, feed)
    assert counts == [1, 0] and outputs[0].tolist() == [2, 6]
    assert _run(guard, {**feed, "cond": np.asarray(False)})[1] == [0, 0]


def test_a_scan_with_scan_output_axes_gets_an_axis_0_entry_per_count() -> None:
    """onnxruntime wants one scan_output_axes entry per scan output; the count's is axis 0 (its
    per-iteration values stacked), summed after the Scan by a ReduceSum named under the prefix."""
    body = helper.make_graph(
        [helper.make_node("Mod", ["ten", "e"], ["r"], name="M")],
        "scan_body",
        [_value("e", TensorProto.INT64, [])],
        [_value("r", TensorProto.INT64, [])],
        initializer=[numpy_helper.from_array(np.asarray(10, np.int64), "ten")],
    )
    scan = helper.make_node(
        "Scan", ["es"], ["rs"], name="S", body=body, num_scan_inputs=1, scan_output_axes=[0]
    )
    model = _model([scan], [_value("es", TensorProto.INT64, ["N"])], [_value("rs", TensorProto.INT64, ["N"])])
    guard = guard_model(model)
    assert guard is not None and guard.nodes == ("M (in S)",)
    attribute = next(
        a
        for a in onnx.load_from_string(guard.model_bytes).graph.node[0].attribute
        if a.name == "scan_output_axes"
    )
    assert list(attribute.ints) == [0, 0]
    outputs, counts = _run(guard, {"es": np.asarray([3, 0, 4, 0], np.int64)})
    assert counts == [2] and outputs[0].tolist() == [1, 0, 2, 0]  # x mod 1 where the divisor was 0
    summed = [n for n in onnx.load_from_string(guard.model_bytes).graph.node if n.op_type == "ReduceSum"]
    assert [n.name for n in summed] == list(guard.flags)


def test_a_model_local_function_holding_only_a_mod_is_guarded_where_it_is_called() -> None:
    """A function is looked into for Mod as for Div: else its Mod is never inlined nor guarded."""
    function = helper.make_function(
        "local",
        "rem",
        ["a", "b"],
        ["c"],
        [helper.make_node("Mod", ["a", "b"], ["c"])],
        [helper.make_opsetid("", 13)],
    )
    model = _model(
        [helper.make_node("rem", ["x", "y"], ["r"], name="call", domain="local")],
        [_value("x", TensorProto.INT32, [2]), _value("y", TensorProto.INT32, [2])],
        [_value("r", TensorProto.INT32, [2])],
        opsets={"": 13, "local": 1},
    )
    model.functions.append(function)
    guard = guard_model(model)
    assert guard is not None and guard.faults == (BY_ZERO,)
    outputs, counts = _run(guard, {"x": np.asarray([7, 7], np.int32), "y": np.asarray([0, 4], np.int32)})
    assert counts == [1] and outputs[0].tolist() == [0, 3]
