"""Indices made from each row's own position in the batch, arange(N), that pick from the row they
are in: onnx_row_mixing.py reads a Gather or GatherND with them as keeping rows their own.

Exporters write such indices for views and for per-row picks:
- torch's dynamo writes as_strided (a flatten after a pool, in torchvision's ConvNeXt and Swin) as a
  Gather from the whole tensor flattened, at arange(N) * R + offsets, R the values of a row and
  the offsets constants in [0, R): row i reads only its own R values.
- the dynamo export of last-token pooling, h[arange(N), lengths - 1], is a GatherND of the
  column [arange(N), lengths - 1]: row i reads row i (onnxruntime refuses an index past the row).
torch's legacy export of that pooling, a Gather at arange(N) * T + lengths - 1, is not vouched for:
a length past the row reads the next row, another request's state, where alone the index is refused.

An index is followed as stride * row + offset with the offsets' bounds known, and the axis that
holds the rows (it must stay the index's first).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import onnx

from server.backends.graph_names import attribute

Constant = Callable[[int], "np.ndarray | None"]  # the value of the node's input i, where known
RowSize = Callable[[str, int], "int | None"]  # (tensor, axis) -> values a row has there (1: the batch)


@dataclass(frozen=True)
class RowIndex:
    """Values stride * row + offset, low <= offset <= high, the row along the first of `rank` axes;
    `column`: the last axis joins this as its first column to other indices (a GatherND's)."""

    stride: int
    low: int
    high: int
    rank: int
    column: bool = False

    def within(self, size: int | None) -> bool:
        """Whether each row's indices stay among the `size` values of its own row."""
        return size is not None and self.stride == size and 0 <= self.low <= self.high < size


class RowPositions:
    """Tensors that hold each row's own position, as RowIndex."""

    def __init__(self) -> None:
        self.found: dict[str, RowIndex] = {}

    def see(self, node: onnx.NodeProto, exactly_n: Callable[[str], bool], constant: Constant) -> None:
        """Follow row positions through `node`; `exactly_n`: whether a tensor is the batch's size."""
        if node.output and node.output[0]:
            found = self._index(node, exactly_n, constant)
            if found is not None:
                self.found[node.output[0]] = found

    def own_rows(self, node: onnx.NodeProto, row_size: RowSize) -> bool:
        """A Gather or GatherND whose indices pick each row from its own row."""
        if len(node.input) < 2 or node.input[1] not in self.found:
            return False
        index = self.found[node.input[1]]
        if node.op_type == "Gather" and not index.column:
            return index.within(row_size(node.input[0], _int(node, "axis", 0)))
        if node.op_type == "GatherND" and index.column and _int(node, "batch_dims", 0) == 0:
            return index.within(row_size(node.input[0], 0))
        return False

    def _index(
        self, node: onnx.NodeProto, exactly_n: Callable[[str], bool], constant: Constant
    ) -> RowIndex | None:
        op = node.op_type
        if op == "Range":
            start, delta = constant(0), constant(2)
            if len(node.input) < 3 or not exactly_n(node.input[1]) or start is None or delta is None:
                return None
            from_zero = start.size == delta.size == 1 and start.flat[0] == 0 and delta.flat[0] == 1
            return RowIndex(1, 0, 0, 1) if from_zero else None
        given = [self.found.get(name) for name in node.input]
        index = next((found for found in given if found is not None), None)
        if index is None or sum(found is not None for found in given) > 1:
            return None
        if op in ("Identity", "Cast"):
            return index if op == "Identity" or _integer(node) else None
        if op == "Unsqueeze" and given[0] is not None and not index.column:
            return _unsqueezed(node, index, constant)
        if op in ("Mul", "Add") and len(node.input) == 2 and not index.column:
            other = constant(1 if given[0] is not None else 0)
            return _scaled(index, other) if op == "Mul" else _shifted(index, other)
        if op == "Concat" and given[0] is not None and index.rank >= 2:
            last = _int(node, "axis", 0) % index.rank == index.rank - 1
            return replace(index, column=True) if last else None
        return None


def _int(node: onnx.NodeProto, name: str, default: int) -> int:
    value = attribute(node, name, default)
    return value if isinstance(value, int) else default


def _integer(node: onnx.NodeProto) -> bool:
    return _int(node, "to", 0) in (onnx.TensorProto.INT32, onnx.TensorProto.INT64)


def _unsqueezed(node: onnx.NodeProto, index: RowIndex, constant: Constant) -> RowIndex | None:
    """New axes anywhere but ahead of the rows' axis."""
    given = constant(1) if len(node.input) > 1 else np.asarray(attribute(node, "axes", []))
    if given is None or given.size == 0:
        return None
    rank = index.rank + given.size
    axes = {int(a) % rank for a in given.flat}
    return None if 0 in axes else replace(index, rank=rank)


def _scaled(index: RowIndex, by: np.ndarray | None) -> RowIndex | None:
    """Times a positive whole number."""
    if by is None or by.size != 1 or by.ndim > index.rank or by.dtype.kind not in "iu" or by.flat[0] < 1:
        return None
    times = int(by.flat[0])
    return replace(index, stride=index.stride * times, low=index.low * times, high=index.high * times)


def _shifted(index: RowIndex, by: np.ndarray | None) -> RowIndex | None:
    """Plus constant offsets that add no axis ahead of the rows'."""
    if by is None or by.size == 0 or by.ndim > index.rank or by.dtype.kind not in "iu":
        return None
    return replace(index, low=index.low + int(by.min()), high=index.high + int(by.max()))
