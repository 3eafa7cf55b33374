"""What the rewrites that add nodes of their own (the integer-division guard, the per-row
quantization) read of a model first: the names it already holds, at any depth (they name theirs
under a prefix that none begins with), and the opset of ONNX's own operators, as onnxruntime reads
it (their nodes' form depends on it)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import onnx

_Dim = int | str | None
ONNX_DOMAIN = ("", "ai.onnx")  # ONNX's own operators: one domain, two spellings
STANDS_FOR = "sluiceway stand-in for: "  # a stand-in node's doc_string, then the op it stands for


def graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """`graph` and every subgraph in it, at any depth."""
    yield graph
    for node in graph.node:
        for sub in subgraphs(node):
            yield from graphs(sub)


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The graphs `node` holds itself (an If's branches, a Loop's or Scan's body), not deeper."""
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            yield attribute.g
        elif attribute.type == onnx.AttributeProto.GRAPHS:
            yield from attribute.graphs


def attribute(node: onnx.NodeProto, name: str, default: object) -> object:
    """The value of `node`'s attribute `name`, `default` where it has none."""
    for found in node.attribute:
        if found.name == name:
            return onnx.helper.get_attribute_value(found)
    return default


def int_attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    """An int attribute's value, `default` where it has none or holds another kind."""
    value = attribute(node, name, default)
    return value if isinstance(value, int) else default


def shape_read(node: onnx.NodeProto, dims: Sequence[_Dim]) -> list[_Dim]:
    """The dims a Shape node reads of a tensor with `dims`: from its `start` to its `end`."""
    start, end, _ = slice(int_attribute(node, "start", 0), int_attribute(node, "end", len(dims))).indices(
        len(dims)
    )
    return list(dims[start:end])


def slice_bound(value: object) -> int:
    """A Slice's start or end as a Python int, within what a slice of any real axis needs (torch
    writes 2**63 - 1 for "to the end", which numpy's int64 arithmetic would wrap)."""
    return int(max(min(int(value), 2**62), -(2**62)))  # type: ignore[call-overload]


def described(node: onnx.NodeProto) -> str:
    """A node as a load's message names it: by its name, else by its first output (a stand-in's
    node, onnx_stand_in_maker.py, by the op it stands for)."""
    if node.doc_string.startswith(STANDS_FOR):
        return node.doc_string[len(STANDS_FOR) :]
    return (
        f"{node.op_type} node '{node.name}'"
        if node.name
        else f"the {node.op_type} node making '{node.output[0]}'"
    )


def taken_names(graph: onnx.GraphProto) -> set[str]:
    """Every name `graph` and its subgraphs hold: values (inputs too: an initializer named as an
    input is only its default, and the client's value wins), weights, nodes and what they make (a
    name a subgraph makes, made again outside, breaks single assignment)."""
    names: set[str] = set()
    for g in graphs(graph):
        names.update(v.name for v in (*g.input, *g.output, *g.value_info))
        names.update(init.name for init in g.initializer)
        for node in g.node:
            names.update(node.output)
            names.add(node.name)
    return names


def free_prefix(graph: onnx.GraphProto, base: str) -> str:
    """`base/`, else `base2/`, `base3/`, ...: the first that begins no name `graph` holds. (Giving
    up where the model already used the name had left it unrewritten.)"""
    names = taken_names(graph)
    prefix, number = f"{base}/", 1
    while any(name.startswith(prefix) for name in names):
        number += 1
        prefix = f"{base}{number}/"
    return prefix


def default_opset(model: onnx.ModelProto) -> int | None:
    """The opset of ONNX's own operators: the last import of "" or "ai.onnx" (one domain, two
    spellings; onnxruntime keeps the last, and so must the nodes added for it), None without one."""
    versions = [o.version for o in model.opset_import if o.domain in ONNX_DOMAIN]
    return versions[-1] if versions else None
