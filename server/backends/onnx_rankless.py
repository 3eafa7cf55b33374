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

from collections.abc import Callable, Collection

import numpy as np
import onnx

from server.backends.graph_names import attribute, shape_read
from server.backends.onnx_batch_names import BatchNames
from server.backends.onnx_mixing_ops import BROADCAST_OPS
from server.backends.onnx_size_positions import EVERY

Dims = list[int | str | None]
_SHAPED_BY_BODIES = frozenset({"Loop", "Scan"})
# A branch's axis: the batch's own, a length made from its size, 1, another length, one not known.
_SIZE, _MADE, _ONE, _OTHER, _UNKNOWN = "size", "made", "one", "", "?"
_MOVES = frozenset({"Squeeze", "Unsqueeze", "Transpose"})  # its axes moved as their attributes say
# Ops whose output has their first input's shape: an If's output read branch by branch stays so
# (and through BROADCAST_OPS, each branch broadcast with the other inputs' shapes).
_SHAPE_KEPT = frozenset({
    "Identity", "Cast", "CastLike", "Relu", "Neg", "Abs", "Sigmoid", "Tanh", "Exp", "Log", "Sqrt", "Not",
    "Sign", "Floor", "Ceil", "Round", "Erf", "Softmax", "LogSoftmax", "Hardmax", "Dropout", "Clip",
    "LeakyRelu", "Elu", "Selu", "Celu", "HardSigmoid", "HardSwish", "Softplus", "Softsign", "Gelu", "Mish",
    "Reciprocal", "Sin", "Cos", "IsNaN", "IsInf",
})  # fmt: skip


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
            axes = None if read is None else [_axis(d, batch, grown) for d in read]
            if name:
                nested = inner.branches.get(value.name, [None]) if read is None else [axes]
                self.branches.setdefault(name, []).extend(nested)

    def _carried(
        self,
        node: onnx.NodeProto,
        axes_of: Callable[[str], list[str] | None],
        constant: Callable[[int], np.ndarray | None],
    ) -> list[list[str] | None] | None:
        """The branches of an op's output made from one If output read branch by branch: its own
        where the op keeps its first input's shape; each broadcast with the other inputs' axes
        where it broadcasts them (x + bias after an If of two ranks); each squeezed, unsqueezed or
        transposed as the op says (a tester, session 65)."""
        read = [name for name in node.input if name in self.branches]
        first = node.op_type in _SHAPE_KEPT or node.op_type in _MOVES
        if len(read) != 1 or (first and node.input[0] != read[0]):
            return None
        if node.op_type in _SHAPE_KEPT:
            return list(self.branches[read[0]])
        if node.op_type in _MOVES:
            return [None if axes is None else _moved(node, axes, constant) for axes in self.branches[read[0]]]
        others = [axes_of(name) for name in node.input if name and name != read[0]]
        if node.op_type not in BROADCAST_OPS or any(axes is None for axes in others):
            return None
        return [
            None if axes is None else _broadcast([axes, *(o for o in others if o is not None)])
            for axes in self.branches[read[0]]
        ]

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
        held = {at for read in reads for at, axis in enumerate(read) if axis in (_SIZE, _MADE)}
        exact = all(at < len(read) and read[at] == _SIZE for read in reads for at in held)
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
        if node.output and node.output[0] and dims(node.output[0]) is None:
            batch, grown = (names.batch, names.grown) if names is not None else (set(), set())
            carried = self._carried(node, axes_reader(node, dims, constant, batch, grown), constant)
            if carried is not None:
                self.branches[node.output[0]] = carried
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


def _broadcast(inputs: list[list[str]]) -> list[str]:
    """Axes broadcast together, aligned from the end: the batch's own where any input has it there,
    else made from its size where any has that, else one not known, another length, or 1."""
    rank = max(len(axes) for axes in inputs)
    padded = [[_ONE] * (rank - len(axes)) + axes for axes in inputs]
    return [
        next((kind for kind in _BROADCAST_ORDER if kind in column), _ONE)
        for column in zip(*padded, strict=True)
    ]


_BROADCAST_ORDER = (_SIZE, _MADE, _UNKNOWN, _OTHER)


def _moved(
    node: onnx.NodeProto, axes: list[str], constant: Callable[[int], np.ndarray | None]
) -> list[str] | None:
    """A branch's axes after a Squeeze, an Unsqueeze or a Transpose; None where not known (axes
    computed, a Squeeze of every axis of length 1 past an axis of a length not known)."""
    if node.op_type == "Transpose":
        perm = attribute(node, "perm", None)
        order = [int(p) for p in perm] if isinstance(perm, list) else list(reversed(range(len(axes))))
        return [axes[p] for p in order] if sorted(order) == list(range(len(axes))) else None
    given = attribute(node, "axes", None)  # (before opset 13; an input after)
    listed = [int(a) for a in given] if isinstance(given, list) else None
    if listed is None and len(node.input) > 1 and node.input[1]:
        value = constant(1)
        if value is None:
            return None
        listed = [int(a) for a in value.flat]
    if node.op_type == "Squeeze":
        if listed is None:  # every axis of 1 (the batch's where a request runs alone: read elsewhere)
            return None if _UNKNOWN in axes else [axis for axis in axes if axis != _ONE]
        dropped = {a % len(axes) for a in listed} if axes else set()
        return [axis for at, axis in enumerate(axes) if at not in dropped]
    if listed is None:
        return None
    grown = list(axes)
    for at in sorted(a % (len(axes) + len(listed)) for a in listed):
        grown.insert(at, _ONE)
    return grown


def _axis(dim: int | str | None, batch: Collection[str], grown: Collection[str]) -> str:
    if isinstance(dim, int):
        return _ONE if dim == 1 else _OTHER
    return _SIZE if dim in batch else _MADE if dim in grown else _UNKNOWN


def axes_reader(
    node: onnx.NodeProto,
    dims: Callable[[str], Dims | None],
    constant: Callable[[int], np.ndarray | None],
    batch: Collection[str],
    grown: Collection[str],
) -> Callable[[str], list[str] | None]:
    """A reader of `node`'s inputs' axes as a branch's are read: from their dims, or a small
    constant's shape (`constant`: the value of the node's input i, where known)."""

    def axes(name: str) -> list[str] | None:
        read = dims(name)
        if read is None and name in node.input:
            value = constant(list(node.input).index(name))
            read = None if value is None else list(value.shape)
        return None if read is None else [_axis(d, batch, grown) for d in read]

    return axes
