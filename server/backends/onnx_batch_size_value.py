"""Values computed from the batch's size (onnx_row_mixing.py asks).

A graph can read the batch's size as a value: Shape(x)[0], Size(x), torch.arange(N). Used as a
shape (a Reshape's, an Expand's) it keeps rows their own; met with the data it does not: x / N
divides each request's rows by the size of the batch it was coalesced into, and arange(N) gives each
row its position among its batch mates. Such values are followed here from the Shape or Size that
reads them, through the small integer arithmetic exporters write (Gather, Slice, Concat, Unsqueeze,
Cast, Add, Mul, ...), to where they meet a floating-point tensor that carries the batch.

Indices made from each row's position that pick from the row itself (a view's, a per-row pick's)
are told apart by onnx_row_positions.py, which this feeds.

A value read from a graph this cannot follow (computed indices into a shape, a shape's length not
known) is not followed: no proof.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import numpy as np
import onnx

from server.backends.graph_names import attribute, described
from server.backends.onnx_row_positions import RowPositions

Dims = list[int | str | None]
Constant = Callable[[int], "np.ndarray | None"]  # the value of the node's input i, where known
EVERY = frozenset({-1})  # every value of the tensor depends on the batch's size

_KEPT = frozenset({"Identity", "Cast", "Squeeze", "Unsqueeze", "Abs", "Floor", "Ceil", "Round"})
_ARITHMETIC = frozenset({"Add", "Sub", "Mul", "Div", "Mod", "Pow", "Max", "Min", "Neg", "Sqrt"})
_FLOATS = frozenset(
    {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
)


class BatchSizeValues:
    """Tensors whose values depend on the batch's size: the positions that hold it exactly (a
    shape's), or EVERY (computed from it)."""

    def __init__(self, batch: Collection[str]) -> None:
        self.batch = batch
        self.sized: dict[str, frozenset[int]] = {}  # tensor -> flat positions holding a size (EVERY)
        self.source: dict[str, str] = {}  # tensor -> the node that read the size, for the message
        self.positions = RowPositions()  # arange(N) and indices made from it

    def see(self, node: onnx.NodeProto, dims: Callable[[str], Dims | None], constant: Constant) -> None:
        """Follow the batch's size through `node` (its inputs' dims and constant values given)."""
        if not node.output or not node.output[0]:
            return
        out = node.output[0]
        found = self._sized(node, dims, constant)
        if found:
            self.sized[out] = found
            self.source[out] = next(
                (self.source[name] for name in node.input if name in self.source), described(node)
            )
        self.positions.see(node, lambda name: self._exactly_n(name, dims), constant)

    def met_with_data(
        self, node: onnx.NodeProto, dims: Callable[[str], Dims | None], floating: Callable[[str], bool]
    ) -> str | None:
        """Why an elementwise node mixes rows: it meets a value made from the batch's size with a
        floating-point tensor that carries the batch."""
        sized = next((name for name in node.input if name in self.sized), None)
        if sized is None:
            return None
        for name in node.input:
            shape = dims(name) or []
            if name not in self.sized and floating(name) and any(d in self.batch for d in shape):
                return (
                    f"{described(node)} reads the batch's size as a value: it meets '{name}' with "
                    f"'{sized}', made from the batch's size by {self.source[sized]}"
                )
        return None

    def within(self, batch: Collection[str]) -> BatchSizeValues:
        """A copy for a subgraph: it reads the enclosing graph's values, its own stay its own."""
        inner = BatchSizeValues(batch)
        inner.sized, inner.source = dict(self.sized), dict(self.source)
        inner.positions.found = dict(self.positions.found)
        return inner

    def _exactly_n(self, name: str, dims: Callable[[str], Dims | None]) -> bool:
        """Whether the tensor is one value, the batch's size itself (not computed from it)."""
        return self.sized.get(name) == frozenset({0}) and dims(name) in ([], [1])

    def _sized(
        self, node: onnx.NodeProto, dims: Callable[[str], Dims | None], constant: Constant
    ) -> frozenset[int]:
        op = node.op_type
        if op == "Shape":
            shape = dims(node.input[0])
            if shape is None:
                return frozenset()
            start, end, _ = slice(_int(node, "start", 0), _int(node, "end", len(shape))).indices(len(shape))
            return frozenset(a - start for a in range(start, end) if shape[a] in self.batch)
        if op == "Size":
            shape = dims(node.input[0]) or []
            return EVERY if any(d in self.batch for d in shape) else frozenset()
        taken = [self.sized.get(name, frozenset()) for name in node.input]
        if not any(taken):
            return frozenset()
        if op in _KEPT or (op == "Reshape" and taken[0]):
            return taken[0]
        if op == "Gather" and _int(node, "axis", 0) == 0:
            return _picked(taken[0], constant(1), _length(dims(node.input[0])))
        if op == "Slice" and taken[0]:
            return _sliced(taken[0], node, constant, _length(dims(node.input[0])))
        if op == "Concat":
            return _joined(taken, [_length(dims(name), constant(i)) for i, name in enumerate(node.input)])
        if op in _ARITHMETIC or op == "Range":
            return EVERY
        return frozenset()


def _int(node: onnx.NodeProto, name: str, default: int) -> int:
    value = attribute(node, name, default)
    return value if isinstance(value, int) else default


def _length(shape: Dims | None, value: np.ndarray | None = None) -> int | None:
    """A 1-D tensor's length where fixed (a scalar's: 1), from its dims or its constant value."""
    if shape is None and value is not None and value.ndim <= 1:
        return value.size
    if shape is None or len(shape) > 1:
        return None
    if not shape:
        return 1
    return shape[0] if isinstance(shape[0], int) else None


def _picked(sized: frozenset[int], indices: np.ndarray | None, length: int | None) -> frozenset[int]:
    """Gather's positions that hold a size (constant indices into a vector of known length)."""
    if indices is None or length is None or not sized:
        return frozenset()
    if sized == EVERY:
        return EVERY
    picks = [int(i) % length for i in indices.flat]
    return frozenset(k for k, i in enumerate(picks) if i in sized)


def _sliced(
    sized: frozenset[int], node: onnx.NodeProto, constant: Constant, length: int | None
) -> frozenset[int]:
    if sized == EVERY:
        return EVERY
    first, last, axes, steps = (
        constant(i) if i < len(node.input) and node.input[i] else None for i in range(1, 5)
    )
    if length is None or first is None or last is None:
        return frozenset()
    if axes is not None and [int(a) for a in axes.flat] not in ([0], [-1]):
        return frozenset()
    step = int(steps.flat[0]) if steps is not None else 1
    start, end = (int(min(max(b.flat[0], -(2**62)), 2**62)) for b in (first, last))
    kept = range(length)[start:end:step]
    return frozenset(k for k, i in enumerate(kept) if i in sized)


def _joined(taken: Sequence[frozenset[int]], lengths: Sequence[int | None]) -> frozenset[int]:
    """Concat's positions that hold a size: each input's, shifted by the lengths before it."""
    if any(t == EVERY for t in taken):
        return EVERY
    held: set[int] = set()
    offset = 0
    for positions, length in zip(taken, lengths, strict=True):
        if length is None:
            return frozenset()
        held.update(offset + p for p in positions)
        offset += length
    return frozenset(held)


def floating(elem_type: int) -> bool:
    return elem_type in _FLOATS
