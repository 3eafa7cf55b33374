"""Tensors of no known rank that may carry the batch (onnx_batch_size_value.py asks): a Loop's or
a Scan's output onnx could not shape, made from a batched input, the tensors of no known rank made
from one (an Identity, a Relu, a Cast of it), and the body inputs of a Loop or Scan fed one and
declared with no shape. Any entry of such a tensor's Shape may be the batch's size: x /
Shape(Loop(x))[0], through a Relu, or read inside a second Loop's body, had loaded batched (a
tester, session 64). Not every tensor of no known rank: a table made from lengths (Range(0, T)) has
none and keeps rows, and Silero VAD compares entries of an If's output of two ranks (read so, it was
refused). An If's output of no known rank is read branch by branch instead: each branch's value has
its own shape, so an entry of its Shape is the batch's size itself only where every branch has the
batch's axis there, and made from it where any branch does (If(c, x, Unsqueeze(x)), read by x /
Shape(it)[0], had loaded batched; session 65).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from server.backends.graph_names import attribute, described, shape_read
from server.backends.onnx_batch_names import BatchNames
from server.backends.onnx_branch_axes import MADE, SIZE, after_op, axes_reader, axis_kind
from server.backends.onnx_size_positions import EVERY

Dims = list[int | str | None]
_SHAPED_BY_BODIES = frozenset({"Loop", "Scan"})


class RanklessTensors:
    """The names of the tensors above, as a walk reaches them."""

    def __init__(self, names: set[str] | None = None) -> None:
        self.names: set[str] = set(names or ())
        self.branches: dict[str, list[list[str] | None]] = {}  # an If's output -> each branch's axes
        self.taken: dict[str, str] = {}  # an If's first output -> the branch its constant condition takes

    def within(self) -> RanklessTensors:
        """A copy for a subgraph: it reads the enclosing graph's, its own stay its own."""
        inner = RanklessTensors(self.names)
        inner.branches = {name: list(axes) for name, axes in self.branches.items()}
        inner.taken = dict(self.taken)
        return inner

    def runs(self, node: onnx.NodeProto, body: onnx.GraphProto) -> bool:
        """Whether `body` may run: not an If's branch its constant condition never takes."""
        taken = self.taken.get(node.output[0]) if node.op_type == "If" and node.output else None
        return taken is None or attribute(node, taken, None) == body

    def returned(
        self,
        node: onnx.NodeProto,
        body: onnx.GraphProto,
        dims: Callable[[str], Dims | None],
        batch: set[str],
        grown: set[str],
        inner: RanklessTensors,
    ) -> None:
        """An If branch's values, as the If's outputs: each axis the batch's own (`batch`, the
        branch's names), a length made from its size (`grown`), or neither; where the branch's value
        has no known rank, the branches `inner` (the branch's own) read it by (an If of two ranks
        inside a branch), else None."""
        if node.op_type != "If" or not node.output:
            return
        for name, value in zip(node.output, body.output, strict=False):
            read = dims(value.name)
            axes = None if read is None else [axis_kind(d, batch, grown) for d in read]
            if name:
                nested = inner.branches.get(value.name, [None]) if read is None else [axes]
                self.branches.setdefault(name, []).extend(nested)

    def paired(self, node: onnx.NodeProto) -> str | None:
        """Why `node` pairs the batch's rows with each other in a branch of an If it reads: its
        output has the batch on two axes there (x + If(c, x, x[:, None]); a tester, session 65)."""
        found = self.branches.get(node.output[0]) if node.output and node.output[0] else None
        if not found or not any(axes is not None and axes.count(SIZE) > 1 for axes in found):
            return None
        return (
            f"{described(node)} pairs each row of the batch with every other where an If before it takes "
            f"a branch of another shape: '{node.output[0]}' then has the batch on two axes"
        )

    def shape_positions(self, node: onnx.NodeProto, name: str) -> frozenset[int] | None:
        """The positions of a Shape of If output `name` (of no known rank) that hold the batch's
        size in every branch; EVERY where a position holds it or a length made from it in some
        branch only (its value then depends on the branch and the batch's size), or a branch's rank
        is not known (a Flatten of an If of two ranks returned); None where `name` is no such output."""
        branches = self.branches.get(name)
        if not branches:
            return None
        if any(axes is None for axes in branches):
            return EVERY
        reads = [shape_read(node, axes) for axes in branches if axes is not None]
        held = {at for read in reads for at, axis in enumerate(read) if axis in (SIZE, MADE)}
        exact = all(at < len(read) and read[at] == SIZE for read in reads for at in held)
        return frozenset(held) if exact else EVERY

    def see(
        self,
        node: onnx.NodeProto,
        dims: Callable[[str], Dims | None],
        batched: Callable[[str], bool],
        constant: Callable[[int], np.ndarray | None] = lambda _: None,
        names: BatchNames | None = None,
    ) -> None:
        """`batched`: whether a tensor is made from an input that carries the batch; `constant`: the
        value of the node's input i where known (an If's constant condition: only the branch it
        takes runs); `names`: the batch's (the axes of a broadcast's other inputs)."""
        condition = constant(0) if node.op_type == "If" else None
        if node.op_type == "If" and condition is not None and condition.size == 1 and node.output:
            self.taken[node.output[0]] = "then_branch" if bool(condition.reshape(-1)[0]) else "else_branch"
        out = node.output[0] if node.output else ""
        if out and dims(out) is None and any(name in self.branches for name in node.input if name):
            batch, grown = (names.batch, names.grown) if names is not None else (set(), set())
            axes_of = axes_reader(node, dims, constant, batch, grown)
            inputs = [
                self.branches.get(name) or _one_of(axes_of(name)) if name else None for name in node.input
            ]
            self.branches[out] = after_op(node, inputs, constant)  # (onnx_branch_axes.py)
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


def _one_of(axes: list[str] | None) -> list[list[str] | None] | None:
    return None if axes is None else [axes]
