"""The values an index into a batch's rows holds (onnx_row_positions.py reads them): Bound, a
range of whole numbers, and RowIndex, stride * row + offset; how ops change them (an offset added,
a stride multiplied, axes added after the rows'), and which offsets are alike in every row (a Range
of sizes alone, moved or cut: the same wherever a Reshape puts it)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace

import numpy as np
import onnx

from server.backends.graph_names import attribute

Dim = int | str | None
Dims = list[Dim]
Constant = Callable[[int], "np.ndarray | None"]  # the value of the node's input i, where known


@dataclass(frozen=True)
class Bound:
    """Integer values from `low` to `top` + `high` (`top` a dim's size, or None for 0)."""

    low: int
    top: Dim
    high: int

    def shifted(self, by: int) -> Bound:
        return Bound(self.low + by, self.top, self.high + by)


@dataclass(frozen=True)
class RowIndex:
    """Values stride * row + offset, the offset within `offset`, the row along the first of `rank`
    axes; `column`: the last axis joins this as its first column to other indices (a GatherND's)."""

    stride: Dim
    offset: Bound
    rank: int
    column: bool = False
    sources: frozenset[str] = frozenset()  # the graph inputs its stride's and offset's sizes are read from

    def within(self, size: Dim) -> bool:
        """Whether each row's indices stay among the `size` values of its own row."""
        if size is None or self.stride != size or self.offset.low < 0:
            return False
        if self.offset.top is None:
            return self.offset.high < size if isinstance(size, int) else self.offset.high <= 0
        return self.offset.top == size and self.offset.high <= -1


def ranged_op(node: onnx.NodeProto, ranged: Collection[str]) -> bool:
    """Whether `node`'s bounded output holds a Range's values of sizes alone, moved or cut."""
    if node.op_type == "Range":
        return True
    moved = node.op_type in ("Reshape", "Slice", "Identity", "Squeeze", "Unsqueeze", "Cast")
    return moved and bool(node.input) and node.input[0] in ranged


def trailing_ones(index: RowIndex, shape: np.ndarray | None) -> RowIndex | None:
    """arange(N).reshape(-1, 1, 1): the rows' place stays along the first axis, as an Unsqueeze."""
    if shape is None or shape.ndim != 1 or shape.size < 1 or int(shape[0]) != -1:
        return None
    return replace(index, rank=int(shape.size)) if bool((shape[1:] == 1).all()) else None


def axis_bound(shape: Dims | None, axis: int) -> Bound | None:
    """A position along `axis` of a tensor of `shape` (an ArgMax's, a TopK's index)."""
    if shape is None or not -len(shape) <= axis < len(shape) or shape[axis] is None:
        return None
    size = shape[axis]
    return Bound(0, None, size - 1) if isinstance(size, int) else Bound(0, size, -1)


def beside_rows(shape: Sequence[Dim] | None, rank: int, batch: Collection[str]) -> bool:
    """Whether a tensor of `shape` added to or multiplying an index of `rank` axes leaves the rows'
    axis first and alone: no more axes than the index, the batch or one value along the rows' axis
    where it reaches it, and the batch along no other (an offset [N] beside an index [N, 1] made it
    [N, N]: each row's answer from every row's offsets; a tester, session 51)."""
    if shape is None or len(shape) > rank or any(dim is None for dim in shape):
        return False
    reaches = len(shape) == rank
    rest = shape[1:] if reaches else shape
    if any(isinstance(dim, str) and dim in batch for dim in rest):
        return False
    return not reaches or shape[0] == 1 or (isinstance(shape[0], str) and shape[0] in batch)


def range_bound(
    start: np.ndarray | None, delta: np.ndarray | None, limit: Dim, batch: Collection[str]
) -> Bound | None:
    """arange(s, L) of a whole s and a dim's size L other than the batch's: values from s to L - 1
    (the kv positions of transformers' padding mask, read per row as mask.flatten()[row * L + kv])."""
    if start is None or delta is None or start.size != 1 or delta.size != 1:
        return None
    if start.dtype.kind not in "iu" or delta.dtype.kind not in "iu" or int(delta.flat[0]) != 1:
        return None
    if limit is None or (isinstance(limit, str) and limit in batch):
        return None  # arange(N) is the rows' own place (RowIndex); a fold's length bounds no row
    if isinstance(limit, int):
        return Bound(int(start.flat[0]), None, limit - 1)
    return Bound(int(start.flat[0]), limit, -1)


def value_bound(value: np.ndarray) -> Bound | None:
    if value.size == 0 or value.dtype.kind not in "iu":
        return None
    return Bound(int(value.min()), None, int(value.max()))


def unsqueezed(node: onnx.NodeProto, index: RowIndex, constant: Constant) -> RowIndex | None:
    """New axes anywhere but ahead of the rows' axis."""
    given = constant(1) if len(node.input) > 1 else np.asarray(attribute(node, "axes", []))
    if given is None or given.size == 0:
        return None
    rank = index.rank + given.size
    axes = {int(a) % rank for a in given.flat}
    return None if 0 in axes else replace(index, rank=rank)


def scaled(index: RowIndex, by: np.ndarray | None, size: Dim) -> RowIndex | None:
    """Times a positive whole number, or arange(N) times a dim's size (a row's steps)."""
    if by is None:  # a dim's size: a symbol, or a number the graph reads from a shape
        plain = index.stride == 1 and index.offset == Bound(0, None, 0)
        if isinstance(size, str) and plain:
            return replace(index, stride=size)
        if not isinstance(size, int):
            return None
        by = np.asarray(size, np.int64)
    if by.size != 1 or by.ndim > index.rank or by.dtype.kind not in "iu" or by.flat[0] < 1:
        return None
    times = int(by.flat[0])
    if not isinstance(index.stride, int) or index.offset.top is not None:
        return None
    offset = Bound(index.offset.low * times, None, index.offset.high * times)
    return replace(index, stride=index.stride * times, offset=offset)


def shifted(index: RowIndex, by: np.ndarray | None, bound: Bound | None) -> RowIndex | None:
    """Plus constant offsets that add no axis ahead of the rows', or bounded values (an ArgMax's)."""
    if by is not None and by.size and by.ndim <= index.rank and by.dtype.kind in "iu":
        bound = Bound(int(by.min()), None, int(by.max()))
    if bound is None or (bound.top is not None and index.offset.top is not None):
        return None
    top = bound.top if bound.top is not None else index.offset.top
    offset = Bound(index.offset.low + bound.low, top, index.offset.high + bound.high)
    return replace(index, offset=offset)
