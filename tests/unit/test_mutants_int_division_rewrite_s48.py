"""server/backends/int_division_rewrite.py: what session 48's mutation survivors showed untested.

- `where` (the model's opset has Where) carried from `rewrite_graph` to every guarded Div/Mod, at
  the top level and inside If and Loop bodies: its default (True) and `where` passed on as None, to
  `guard_nodes` or into the bodies (`_rewrite_bodies`). Then the safe divisor is computed in the
  Add form of opsets 7 and 8 (`B + Cast(B == 0) + ...`, five nodes) instead of one Where: the same
  values, so only the nodes tell; the guarded model is also run, so the Where form is seen to answer.
- `_scope`'s own typing, where onnx's inference leaves a body's division untyped (its dividend from
  a custom op onnx cannot type): a branch's initializer (inference does not type a subgraph's
  initializers), an outer graph's input, and a Constant in a Loop body inference skips.

Not pinned, equivalent: `node.input[:3]` (a Div/Mod has two inputs; a third is no model onnxruntime
loads); `zip(..., strict=True)` weakened in `_rewrite_bodies` and `_sequence_sums` (both lists built
from the same flags); a body's count output declared without its shape (onnx's inference, strict
too, its checker and its reference runtime answer the same: the ReduceSum types it a scalar).
Every run divides only through the guard or by nonzero values, so it is safe on any onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, shape_inference

from server.backends.int_division_guard import guard_model
from server.backends.int_division_rewrite import Scope, graphs, rewrite_graph
from server.backends.onnxruntime_backend import CPU
from tests.support.division_models import subgraph_divisions


def _value(name: str, elem: int, dims: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, dims)


def _guard_ops(graph: onnx.GraphProto, prefix: str) -> list[str]:
    """The op types of the nodes the guard added to `graph` itself (named under `prefix`)."""
    return [n.op_type for n in graph.node if n.name.startswith(prefix)]


def test_rewrite_graph_defaults_to_where() -> None:
    """Called without `where`, `rewrite_graph` guards with Where (the default says the opset has
    it); the mutant's default builds the Add form."""
    graph = helper.make_graph(
        [helper.make_node("Div", ["x", "y"], ["q"], name="D")],
        "g",
        [_value("x", TensorProto.INT64, [3]), _value("y", TensorProto.INT64, [3])],
        [_value("q", TensorProto.INT64, [3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    flags = rewrite_graph(model.graph, shape_inference.infer_shapes(model).graph, Scope(), "p/")
    assert [f.node for f in flags] == ["D", "D"]
    ops = _guard_ops(model.graph, "p/")
    assert "Where" in ops and "Add" not in ops


def test_top_level_and_body_divisions_at_opset_13_are_guarded_with_where(tmp_path: Path) -> None:
    """At opset 13 every guarded Div, in the If's branch and the Loop's body as at the top level,
    gets a Where and none of the Add form (which `where=None` passed down would build); the
    guarded model answers 1-divisions where y holds a zero and flags them."""
    graph = onnx.load(str(subgraph_divisions(tmp_path / "sub.onnx"))).graph
    top = helper.make_node("Div", ["x", "y"], ["t"], name="Div_top")
    graph.node.append(top)
    graph.output.append(_value("t", TensorProto.INT32, [3]))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    guard = guard_model(model)
    assert guard is not None
    assert sorted(set(guard.nodes)) == ["Div_loop (in Loop_l)", "Div_then (in If_q)", "Div_top"]
    rewritten = onnx.load_from_string(guard.model_bytes)
    guarded = {d.name: g for g in graphs(rewritten.graph) for d in g.node if d.name.startswith("Div_")}
    assert sorted(guarded) == ["Div_loop", "Div_then", "Div_top"]
    for name, g in guarded.items():
        ops = [n.op_type for n in g.node if n.op_type in ("Where", "Add")]
        assert ops == ["Where"], name
    s = ort.InferenceSession(guard.model_bytes, providers=[CPU])
    x, y = np.asarray([6, 9, 4], np.int32), np.asarray([3, 0, 2], np.int32)
    q, loop, t, *counts = s.run(["q", "l", "t", *guard.flags], {"x": x, "y": y})
    assert q.tolist() == [2, 9, 2] and loop.tolist() == [0, 9, 1] and t.tolist() == [2, 9, 2]
    by_node: dict[str, int] = {}
    for node, count in zip(guard.nodes, counts, strict=True):
        by_node[node] = by_node.get(node, 0) + int(count)
    assert by_node == {"Div_then (in If_q)": 1, "Div_loop (in Loop_l)": 2, "Div_top": 1}


def _custom_model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto]) -> onnx.ModelProto:
    """A model whose graph is `nodes` (output "out", int32 [2]), importing "" 13 and the custom
    domain "com.example" of an op `Foo` onnx cannot type (a custom op library's, at the server)."""
    graph = helper.make_graph(nodes, "custom", inputs, [_value("out", TensorProto.INT32, [2])])
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.example", 1)]
    )


def _if_dividing(then_nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto]) -> onnx.ModelProto:
    """out = If(b, then: `then_nodes` (from x, into t), else: x), named 'If_f'; x, y: int32 [2]."""
    then_branch = helper.make_graph(
        then_nodes, "then", [], [helper.make_empty_tensor_value_info("t")], initializer=initializers
    )
    else_branch = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["e"])], "else", [], [helper.make_empty_tensor_value_info("e")]
    )
    node = helper.make_node(
        "If", ["b"], ["out"], name="If_f", then_branch=then_branch, else_branch=else_branch
    )
    x, y = _value("x", TensorProto.INT32, [2]), _value("y", TensorProto.INT32, [2])
    return _custom_model([node], [x, y, _value("b", TensorProto.BOOL, [])])


def test_a_branch_dividing_an_untyped_value_by_its_own_initializer_is_guarded() -> None:
    """t = Foo(x) / w, w an initializer of the branch: onnx's inference types neither Foo's value
    nor the Div's output, nor (inside a subgraph) the branch's initializers, so w's own data type
    is the only type known (`_scope` takes it from the initializer; without it: "not known")."""
    w = onnx.numpy_helper.from_array(np.asarray([0, 2], np.int32), "w")
    model = _if_dividing(
        [
            helper.make_node("Foo", ["x"], ["fx"], domain="com.example"),
            helper.make_node("Div", ["fx", "w"], ["t"], name="Div_w"),
        ],
        [w],
    )
    guard = guard_model(model)
    assert guard is not None and guard.nodes == ("Div_w (in If_f)", "Div_w (in If_f)")


def test_a_branch_dividing_an_untyped_value_by_an_outer_input_is_guarded() -> None:
    """t = Foo(x) / y, y the outer graph's input: the branch's inference leaves the Div untyped,
    so y's type comes from the outer scope (which the mutant kept only for names the branch
    itself defines, i.e. hides)."""
    model = _if_dividing(
        [
            helper.make_node("Foo", ["x"], ["fx"], domain="com.example"),
            helper.make_node("Div", ["fx", "y"], ["t"], name="Div_y"),
        ],
        [],
    )
    guard = guard_model(model)
    assert guard is not None and guard.nodes == ("Div_y (in If_f)", "Div_y (in If_f)")


def test_a_loop_body_left_untyped_by_inference_types_its_constant_divisor_itself() -> None:
    """A Loop whose carried value comes from a custom op, its body's inputs declared without types:
    onnx's inference skips the body, so the Constant divisor c ([0, 2], int32) is typed only by
    `_scope` from its `value` tensor (without that, or with another key or None, the body's Div has
    no known type and the model is refused)."""
    c = onnx.numpy_helper.from_array(np.asarray([0, 2], np.int32), "c")  # a zero: not known safe
    body = helper.make_graph(
        [
            helper.make_node("Constant", [], ["c"], value=c),
            helper.make_node("Foo", ["acc_in"], ["f"], domain="com.example"),
            helper.make_node("Div", ["f", "c"], ["acc_out"], name="Div_c"),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [helper.make_empty_tensor_value_info(name) for name in ("i", "cond_in", "acc_in")],
        [_value("cond_out", TensorProto.BOOL, []), helper.make_empty_tensor_value_info("acc_out")],
    )
    model = _custom_model(
        [
            helper.make_node("Foo", ["x"], ["x0"], domain="com.example"),
            helper.make_node("Loop", ["n", "yes", "x0"], ["out"], name="Loop_c", body=body),
        ],
        [
            _value("x", TensorProto.INT32, [2]),
            _value("n", TensorProto.INT64, []),
            _value("yes", TensorProto.BOOL, []),
        ],
    )
    guard = guard_model(model)
    assert guard is not None and guard.nodes == ("Div_c (in Loop_c)", "Div_c (in Loop_c)")
