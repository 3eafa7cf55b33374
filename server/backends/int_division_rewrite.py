"""The integer division guard's walk over a graph and its subgraphs (int_division_guard.py).

Each integer Div/Mod gets its guard nodes (int_division_nodes.py) right before it. A guarded node
inside an If, Loop, Scan or SequenceMap body cannot fail the run itself, so its counts leave the
body as extra outputs: an If's both branches each output every count of either (a Constant 0 for
the other branch's), a Loop's or Scan's body outputs them as scan outputs (one per iteration), a
SequenceMap's as sequences (one per item), summed after the node. Each count so reaches the
top-level graph, where it becomes a graph output (a flag).

Names are scoped as onnxruntime resolves them: a subgraph sees the outer graphs' values unless it
defines the same name itself (a body input named as an outer constant is not that constant).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx
from onnx import TensorProto, helper

from server.backends.graph_names import graphs
from server.backends.int_division_nodes import INTEGERS, guard_nodes, is_division, safe_constant

Constant = onnx.TensorProto | onnx.AttributeProto
_LOOPS = ("Loop", "Scan")  # bodies run once per iteration: their counts leave as scan outputs


class GuardUnavailable(Exception):
    """The model's integer divisions cannot be guarded; the message says why."""


@dataclass(frozen=True)
class Flag:
    """A scalar INT64 value of one graph: how many bad divisors a guarded node met."""

    name: str
    node: str  # the guarded node, as a message names it
    fault: str  # BY_ZERO or OVERFLOW


@dataclass(frozen=True)
class Scope:
    """What a graph sees: its values' element types and the values fixed at load."""

    types: dict[str, int] = field(default_factory=dict)
    constants: dict[str, Constant] = field(default_factory=dict)


def has_division(graph: onnx.GraphProto) -> bool:
    return any(is_division(node) for g in graphs(graph) for node in g.node)


def rewrite_graph(
    graph: onnx.GraphProto, inferred: onnx.GraphProto, outer: Scope, path: str, *, where: bool = True
) -> list[Flag]:
    """Guard `graph`'s integer divisions, its subgraphs' too, in place; their flags, values of
    `graph`. `inferred` is `graph` after onnx's shape inference (the same nodes, typed values),
    `path` makes the added names unique across subgraphs, `where`: the model's opset has Where."""
    scope = _scope(graph, inferred, outer)
    before: dict[int, list[onnx.NodeProto]] = {}
    after: dict[int, list[onnx.NodeProto]] = {}
    flags: list[Flag] = []
    for index, node in enumerate(graph.node):
        prefix = f"{path}{index}/"
        label = node.name or f"{node.op_type} (unnamed, node {index} of {graph.name or 'a graph'})"
        if is_division(node):
            elem = next((scope.types[n] for n in (*node.input[:2], node.output[0]) if n in scope.types), None)
            if elem is None:
                raise GuardUnavailable(f"the type of node {label!r} is not known")
            if elem in INTEGERS and not safe_constant(scope.constants.get(node.input[1]), elem):
                before[index], node.input[1], counted = guard_nodes(prefix, node, elem, where=where)
                flags += [Flag(name, label, fault) for name, fault in counted]
        elif any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            after[index], inner = _rewrite_bodies(node, inferred.node[index], scope, prefix, where)
            flags += inner
    ordered: list[onnx.NodeProto] = []
    for index, node in enumerate(graph.node):  # guards right before their node: still topological
        ordered += [*before.get(index, ()), node, *after.get(index, ())]
    del graph.node[:]
    graph.node.extend(ordered)
    return flags


def _rewrite_bodies(
    node: onnx.NodeProto, inferred: onnx.NodeProto, scope: Scope, prefix: str, where: bool
) -> tuple[list[onnx.NodeProto], list[Flag]]:
    """Guard the subgraphs of `node` and thread their flags out of it: the nodes to put after
    `node` and the flags, values of `node`'s graph."""
    typed = {a.name: a for a in inferred.attribute}
    bodies: dict[str, list[Flag]] = {}
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPHS and any(has_division(g) for g in attribute.graphs):
            raise GuardUnavailable(f"node {node.name!r} ({node.op_type}) has divisions in a graph list")
        if attribute.type == onnx.AttributeProto.GRAPH:
            path = f"{prefix}{attribute.name}/"
            bodies[attribute.name] = rewrite_graph(
                attribute.g, typed[attribute.name].g, scope, path, where=where
            )
    every = [flag for inner in bodies.values() for flag in inner]
    if not every:
        return [], []
    label = node.name or node.op_type
    if node.op_type == "If" and set(bodies) == {"then_branch", "else_branch"}:
        for attribute in node.attribute:
            _output_flags(attribute.g, bodies[attribute.name], every)
        outer = [Flag(f"{prefix}{i}", f"{f.node} (in {label})", f.fault) for i, f in enumerate(every)]
        node.output.extend(flag.name for flag in outer)
        return [], outer
    if node.op_type in _LOOPS and set(bodies) == {"body"}:
        body = next(a.g for a in node.attribute if a.name == "body")
        _output_flags(body, every, every)
        for attribute in node.attribute:  # one entry per scan output, where the model gave them
            if attribute.name in ("scan_output_axes", "scan_output_directions"):
                attribute.ints.extend([0] * len(every))
        per_iteration = [f"{prefix}{i}/per_iteration" for i in range(len(every))]
        node.output.extend(per_iteration)
        outer = [Flag(f"{prefix}{i}", f"{f.node} (in {label})", f.fault) for i, f in enumerate(every)]
        sums = [
            helper.make_node("ReduceSum", [each], [flag.name], name=flag.name, keepdims=0)
            for each, flag in zip(per_iteration, outer, strict=True)
        ]
        return sums, outer
    if node.op_type == "SequenceMap" and set(bodies) == {"body"}:
        body = next(a.g for a in node.attribute if a.name == "body")
        _output_flags(body, every, every)
        per_item = [f"{prefix}{i}/per_item" for i in range(len(every))]
        node.output.extend(per_item)  # a sequence of counts, one per item
        outer = [Flag(f"{prefix}{i}", f"{f.node} (in {label})", f.fault) for i, f in enumerate(every)]
        return _sequence_sums(prefix, per_item, outer), outer
    raise GuardUnavailable(f"node {label!r} ({node.op_type}) has integer divisions in its subgraph")


def _sequence_sums(prefix: str, sequences: list[str], flags: list[Flag]) -> list[onnx.NodeProto]:
    """Nodes summing each sequence of scalar counts into its flag; a 0 is put in first, as an empty
    sequence cannot be concatenated (a SequenceMap over no items)."""
    zero = f"{prefix}zero"
    nodes = [
        helper.make_node(
            "Constant", [], [zero], name=zero, value=helper.make_tensor(zero, TensorProto.INT64, [], [0])
        )
    ]
    for sequence, flag in zip(sequences, flags, strict=True):
        nodes += [
            helper.make_node(
                "SequenceInsert", [sequence, zero], [f"{sequence}/and_zero"], name=f"{sequence}/and_zero"
            ),
            helper.make_node(
                "ConcatFromSequence",
                [f"{sequence}/and_zero"],
                [f"{sequence}/all"],
                name=f"{sequence}/all",
                axis=0,
                new_axis=1,
            ),
            helper.make_node("ReduceSum", [f"{sequence}/all"], [flag.name], name=flag.name, keepdims=0),
        ]
    return nodes


def _output_flags(body: onnx.GraphProto, own: list[Flag], every: list[Flag]) -> None:
    """Add every flag of `every` to `body`'s outputs, in order: its own, a Constant 0 for the rest."""
    for flag in every:
        name = flag.name
        if flag not in own:
            name = f"{flag.name}/none_here/{body.name}"
            zero = helper.make_tensor(name, TensorProto.INT64, [], [0])
            body.node.append(helper.make_node("Constant", [], [name], name=name, value=zero))
        body.output.append(helper.make_tensor_value_info(name, TensorProto.INT64, []))


def _scope(graph: onnx.GraphProto, inferred: onnx.GraphProto, outer: Scope) -> Scope:
    """`outer` with `graph`'s own names over it (a name it defines hides the outer one)."""
    own = {v.name for v in graph.input} | {o for node in graph.node for o in node.output}
    own |= {init.name for init in graph.initializer}
    types = {name: elem for name, elem in outer.types.items() if name not in own}
    for value in (*inferred.input, *inferred.value_info, *inferred.output):
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
            types[value.name] = value.type.tensor_type.elem_type
    for init in graph.initializer:
        types.setdefault(init.name, init.data_type)
    inputs = {v.name for v in graph.input}
    constants = {name: value for name, value in outer.constants.items() if name not in own}
    constants.update((init.name, init) for init in graph.initializer if init.name not in inputs)
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.attribute:
            constants[node.output[0]] = node.attribute[0]
            if node.attribute[0].name == "value":
                types.setdefault(node.output[0], node.attribute[0].t.data_type)
    return Scope(types, constants)
