"""Tensors of no known rank that may carry the batch (onnx_batch_size_value.py asks): a Loop's or
a Scan's output onnx could not shape, made from a batched input, the tensors of no known rank made
from one (an Identity, a Relu, a Cast of it), and the body inputs of a Loop or Scan fed one and
declared with no shape. Any entry of such a tensor's Shape may be the batch's size: x /
Shape(Loop(x))[0], through a Relu, or read inside a second Loop's body, had loaded batched (a
tester, session 64). Not every tensor of no known rank: a table made from lengths (Range(0, T)) has
none and keeps rows, and Silero VAD compares entries of an If's output of two ranks (read so, it was
refused; an If whose branches return x and Unsqueeze(x), read by x / Shape(it)[0], stays open).
"""

from __future__ import annotations

from collections.abc import Callable

import onnx

from server.backends.graph_names import attribute

Dims = list[int | str | None]
_SHAPED_BY_BODIES = frozenset({"Loop", "Scan"})


class RanklessTensors:
    """The names of the tensors above, as a walk reaches them."""

    def __init__(self, names: set[str] | None = None) -> None:
        self.names: set[str] = set(names or ())

    def within(self) -> RanklessTensors:
        """A copy for a subgraph: it reads the enclosing graph's, its own stay its own."""
        return RanklessTensors(self.names)

    def see(
        self, node: onnx.NodeProto, dims: Callable[[str], Dims | None], batched: Callable[[str], bool]
    ) -> None:
        """`batched`: whether a tensor is made from an input that carries the batch."""
        fed = any(name in self.names for name in node.input if name)
        for out in node.output:
            if not out or dims(out) is not None:
                continue
            if fed or (node.op_type in _SHAPED_BY_BODIES and batched(out)):
                self.names.add(out)
        body = attribute(node, "body", None) if node.op_type in ("Loop", "Scan") else None
        if not isinstance(body, onnx.GraphProto):
            return
        # A Loop's body takes its count and condition, then the carried values its inputs give in
        # order; a Scan's (from opset 9) its states, then a slice of each scanned input, in order.
        for name, value in zip(node.input, body.input, strict=False):
            if name in self.names and not value.type.tensor_type.HasField("shape"):
                self.names.add(value.name)
