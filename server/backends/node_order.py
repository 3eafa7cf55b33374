"""A graph's nodes in an order where each comes after the nodes making its inputs.

ONNX asks for that order and exporters write it, but onnxruntime sorts a graph itself and runs one
that is out of order. The row-mixing reading walks nodes in the order given: a node listed before
the node making its input was read as taking a value from nowhere, and x / Size(Loop(ReduceMax(x)))
with the ReduceMax listed last loaded batched and divided each request by the batch's size (a
tester, session 62). The reading's copy of a graph is put in order first (onnx_mixing_probe.py).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

import onnx

from server.backends.graph_names import subgraphs


def reads(node: onnx.NodeProto) -> Iterator[str]:
    """The names `node` reads: its inputs, and every input of its bodies' nodes (a body may read
    the enclosing graph's tensors by name; its own names too: more, never fewer)."""
    yield from node.input
    for body in subgraphs(node):
        for inner in body.node:
            yield from reads(inner)


def ordered(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """`graph`'s nodes, each after the nodes making what it reads, otherwise as listed (a stable
    sort); as listed where no such order exists (a cycle)."""
    nodes = list(graph.node)
    return [nodes[at] for at in _order(nodes)]


def _order(nodes: list[onnx.NodeProto]) -> list[int]:
    """The indices of `nodes` in `ordered`'s order."""
    maker = {name: at for at, node in enumerate(nodes) for name in node.output if name}
    after: list[set[int]] = [set() for _ in nodes]  # node -> the nodes that read what it makes
    waiting = [0] * len(nodes)
    for at, node in enumerate(nodes):
        for source in {maker[name] for name in reads(node) if name in maker} - {at}:
            after[source].add(at)
            waiting[at] += 1
    ready = [at for at, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        at = heapq.heappop(ready)
        order.append(at)
        for reader in after[at]:
            waiting[reader] -= 1
            if waiting[reader] == 0:
                heapq.heappush(ready, reader)
    return order if len(order) == len(nodes) else list(range(len(nodes)))


def sort_nodes(graph: onnx.GraphProto) -> None:
    """Put `graph`'s nodes, and every body's, in order (`ordered`), in place."""
    for node in graph.node:
        for body in subgraphs(node):
            sort_nodes(body)
    nodes = list(graph.node)
    order = _order(nodes)
    if order != list(range(len(nodes))):
        copies = [onnx.NodeProto() for _ in order]
        for copy, at in zip(copies, order, strict=True):
            copy.CopyFrom(nodes[at])
        del graph.node[:]
        graph.node.extend(copies)
