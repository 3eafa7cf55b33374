"""Model-local functions' default attributes given to the calls that leave them out
(server/backends/function_inlining.py): per overload (IR 10), at any depth (a call in an If branch
inside another function), and the model itself returned untouched where no call leaves one out."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from server.backends.function_inlining import inlined, with_call_defaults

F = TensorProto.FLOAT
N = helper.make_node


def _soft(name: str, default: int | None, overload: str = "") -> onnx.FunctionProto:
    soft = N("Softmax", ["a"], ["b"])
    soft.attribute.append(helper.make_attribute_ref("axis", onnx.AttributeProto.INT))
    function = helper.make_function("local", name, ["a"], ["b"], [soft], [helper.make_opsetid("", 17)])
    if overload:
        function.overload = overload
    if default is not None:
        function.attribute_proto.append(helper.make_attribute("axis", default))
    return function


def _model(nodes: list[onnx.NodeProto], functions: list[onnx.FunctionProto]) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", F, ["N", 4])],
        [helper.make_tensor_value_info(o, F, ["N", 4]) for o in nodes[-1].output],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)]
    model = helper.make_model(graph, opset_imports=opsets, functions=functions)
    model.ir_version = 10
    return model


def _axes(model: onnx.ModelProto) -> dict[str, int | None]:
    """Each inlined Softmax's axis by the output it makes (None: left to the op's default)."""
    found: dict[str, int | None] = {}
    for node in inlined(model).graph.node:
        if node.op_type == "Softmax":
            given = [a.i for a in node.attribute if a.name == "axis"]
            found[node.output[0]] = given[0] if given else None
    return found


def test_each_overload_gives_its_own_default() -> None:
    first, second = N("Soft", ["x"], ["p"], domain="local"), N("Soft", ["x"], ["q"], domain="local")
    first.overload, second.overload = "rows", "cols"
    model = _model([first, second], [_soft("Soft", 0, "rows"), _soft("Soft", 1, "cols")])
    assert _axes(model) == {"p": 0, "q": 1}


def test_a_call_inside_an_if_branch_of_another_function_gets_its_default() -> None:
    inner_call = N("Soft", ["a"], ["t"], domain="local")
    branch = helper.make_graph([inner_call], "then", [], [helper.make_tensor_value_info("t", F, None)])
    outer = helper.make_function(
        "local",
        "Outer",
        ["a"],
        ["b"],
        [
            N("Constant", [], ["c"], value=numpy_helper.from_array(np.array(True))),
            N("If", ["c"], ["b"], then_branch=branch, else_branch=branch),
        ],
        [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
    )
    model = _model([N("Outer", ["x"], ["y"], domain="local")], [outer, _soft("Soft", 0)])
    copied = with_call_defaults(model)
    call = copied.functions[0].node[1].attribute[0].g.node[0]
    assert [(a.name, a.i) for a in call.attribute] == [("axis", 0)]
    assert not branch.node[0].attribute  # the model's own function is left as it was


def test_the_model_itself_where_no_call_leaves_a_default_out() -> None:
    given = _model([N("Soft", ["x"], ["y"], domain="local", axis=1)], [_soft("Soft", 0)])
    assert with_call_defaults(given) is given
    plain = _model([N("Soft", ["x"], ["y"], domain="local", axis=1)], [_soft("Soft", None)])
    assert with_call_defaults(plain) is plain
    left_out = _model([N("Soft", ["x"], ["y"], domain="local")], [_soft("Soft", 0)])
    assert with_call_defaults(left_out) is not left_out
    assert _axes(left_out) == {"y": 0}
