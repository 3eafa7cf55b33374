"""The names an ONNX graph already holds, for the rewrites that add tensors and nodes of their own
(the integer-division guard, the per-row quantization): they name theirs under a prefix that no
name of the model begins with, at any depth."""

from __future__ import annotations

from collections.abc import Iterator

import onnx


def graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """`graph` and every subgraph in it, at any depth."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            for sub in (attribute.g,) if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs:
                yield from graphs(sub)


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
