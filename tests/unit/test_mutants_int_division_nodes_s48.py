"""server/backends/int_division_nodes.py: the guard nodes of one integer Div/Mod, built directly.

What the mutation survivors of session 48 showed untested: the default of `where` (True: the
model's opset has Where) of `guard_nodes` and `GuardNodes`, and `where` passed on to `GuardNodes`.
With it false or None the safe divisor is computed as `B + Cast(B == 0) + 2 * Cast(...)` (five nodes,
the form for opsets 7 and 8) instead of one Where: the same values, so only the nodes tell. Each
test also runs the built nodes, so the Where form is seen to answer (1 in place of a zero, and of a
-1 under MIN). Every run divides only through the guard, so it is safe on any onnxruntime.

Not pinned, equivalent: the added values' internal names renamed (they stay under the guard's
prefix and distinct; the flags are fetched by the names `DivisionGuard.flags` gives and never
shown), and the Cast back to the divisor's type added for int32/int64 too (a Cast to its own type
is the identity)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from server.backends.int_division_nodes import BY_ZERO, OVERFLOW, GuardNodes, guard_nodes
from server.backends.onnxruntime_backend import CPU

MIN32 = int(np.iinfo(np.int32).min)
ADD_FORM = {"Add"}  # what the form without Where adds; Where's form adds none


def _value(name: str, elem: int, dims: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, dims)


def _run(nodes: list[onnx.NodeProto], outputs: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run `nodes` (inputs x, y: int32 [N]) at opset 13 and fetch `outputs` (untyped: inferred)."""
    graph = helper.make_graph(
        nodes,
        "guard_nodes",
        [_value("x", TensorProto.INT32, ["N"]), _value("y", TensorProto.INT32, ["N"])],
        [helper.make_empty_tensor_value_info(name) for name in outputs],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    s = ort.InferenceSession(model.SerializeToString(), providers=[CPU])
    return list(s.run(outputs, feed))


def test_guard_nodes_use_where_unless_told_the_opset_has_none() -> None:
    """`where` defaults to True: called without it, the safe divisor is one Where (the Add form,
    which the mutants build, is for opsets 7 and 8 only), and it answers 1 for a zero and for -1
    under MIN, counting each."""
    div = helper.make_node("Div", ["x", "y"], ["q"], name="D")
    nodes, safe, counts = guard_nodes("p/", div, TensorProto.INT32)
    ops = [n.op_type for n in nodes]
    assert "Where" in ops and not ADD_FORM & set(ops)
    assert [fault for _, fault in counts] == [BY_ZERO, OVERFLOW]
    x = np.asarray([7, MIN32, MIN32, 9], np.int32)
    y = np.asarray([0, -1, 2, -1], np.int32)
    got, zeros, overflows = _run(nodes, [safe, *(name for name, _ in counts)], {"x": x, "y": y})
    assert got.tolist() == [1, 1, 2, -1] and (int(zeros), int(overflows)) == (1, 1)


def test_guard_nodes_with_where_false_use_the_add_form() -> None:
    """The other side of the default: `where=False` builds no Where and answers the same."""
    div = helper.make_node("Div", ["x", "y"], ["q"], name="D")
    nodes, safe, counts = guard_nodes("p/", div, TensorProto.INT32, where=False)
    ops = [n.op_type for n in nodes]
    assert "Where" not in ops and set(ops) >= ADD_FORM
    x = np.asarray([7, MIN32, MIN32, 9], np.int32)
    y = np.asarray([0, -1, 2, -1], np.int32)
    got, zeros, overflows = _run(nodes, [safe, *(name for name, _ in counts)], {"x": x, "y": y})
    assert got.tolist() == [1, 1, 2, -1] and (int(zeros), int(overflows)) == (1, 1)


def test_guard_nodes_class_defaults_to_where_and_keeps_what_it_is_given() -> None:
    """`GuardNodes(prefix)` is for an opset with Where; `where=True` given is kept as such (a None
    stored in its place would be read as "no Where")."""
    for build in (GuardNodes("p/"), GuardNodes("p/", where=True)):
        zero = build.add("Equal", ["y", build.constant("zero", TensorProto.INT32, 0)], "is_zero")
        safe = build.safe_divisor("y", TensorProto.INT32, zero, None)
        ops = [n.op_type for n in build.nodes]
        assert "Where" in ops and not ADD_FORM & set(ops)
        y = np.asarray([0, 3, -1], np.int32)
        (got,) = _run(build.nodes, [safe], {"x": y, "y": y})
        assert got.tolist() == [1, 3, -1]
    assert GuardNodes("p/", where=False).where is False
