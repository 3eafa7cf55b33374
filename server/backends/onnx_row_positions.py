"""Indices made from each row's own position in the batch, arange(N), that pick from the row they
are in: onnx_row_mixing.py reads a Gather or GatherND with them as keeping rows their own.

Exporters write such indices for views and for per-row picks:
- torch's dynamo writes as_strided (a flatten after a pool, in torchvision's ConvNeXt and Swin) as a
  Gather from the whole tensor flattened, at arange(N) * R + offsets, R the values of a row and
  the offsets constants in [0, R): row i reads only its own R values.
- torch's legacy export of h[arange(N), idx] is a Gather from h flattened to [N*T, ...] at
  arange(N) * T + idx: row i reads its own row where idx is in [0, T). That holds for an idx made
  by an ArgMax or a TopK over the T steps (CLIP's pooling at the end-of-text token), by a Mod by T
  (GPT-2's sequence classification), or a constant; it does not for an idx the client sends
  (lengths - 1: a length past the row read the next request's state, where alone onnxruntime
  refuses the index), so such a Gather is read as mixing.
- the dynamo export of that pooling is a GatherND of the column [arange(N), idx]: row i reads row
  i whatever idx is (onnxruntime refuses an index past the row).
- transformers' padding mask, mask[arange(N), arange(L)], is a Gather from the mask flattened at
  arange(N) * L + arange(L): a Range of a dim's size bounds the offset (ConditionalDETR, DETR).
- the legacy export of `y[..., :2] += r` is a ScatterND at every place, the columns arange(N)
  .reshape(-1, 1, 1), arange(Q).reshape(-1, 1), arange(4)[:2] expanded to their sum's shape: the
  rows' column is arange(N), the sum's other terms a Range's values, alike in every row wherever a
  Reshape or a Slice puts them (ConditionalDETR's boxes).

An index is followed as stride * row + offset, the offset's bounds known (a whole number, or a
step count less a number), and the axis that holds the rows (it must stay the index's first).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import replace

import numpy as np
import onnx

from server.backends.graph_names import attribute, int_attribute, shape_read, slice_bound
from server.backends.onnx_row_offsets import (
    Bound,
    Constant,
    Dim,
    Dims,
    RowIndex,
    axis_bound,
    beside_rows,
    range_bound,
    ranged_op,
    scaled,
    shifted,
    trailing_ones,
    unsqueezed,
    value_bound,
)

__all__ = ["Bound", "RowIndex", "RowPositions"]

RowSize = Callable[[str, int], Dim]  # (tensor, axis) -> values a row has there (1: the batch)
_KEPT = frozenset({"Identity", "Cast", "Squeeze", "Unsqueeze"})  # a Reshape can move the rows' axis
_STARTS = frozenset({"Shape", "ArgMax", "ArgMin", "TopK", "Mod", "ConstantOfShape"})  # what starts a trail


class RowPositions:
    """Tensors that hold each row's own position (RowIndex), bounded integer values (Bound), and
    single values that are a dim's size (a shape's dim read: Shape then Gather)."""

    def __init__(
        self, roots: Collection[str], batch: Collection[str], itself: Callable[[Dim], bool] | None = None
    ) -> None:
        self.roots = roots
        self.batch = batch  # every name the batch goes by (folds too)
        # the batch's size itself under any name (decoder queries' zeros(N, Q, C) name it anew)
        self.itself = itself if itself is not None else lambda dim: dim in roots
        self.found: dict[str, RowIndex] = {}
        self.bounds: dict[str, Bound] = {}
        self.sizes: dict[str, Dim] = {}  # a tensor of one value -> the dim whose size it is
        self.shapes: dict[str, Dims] = {}  # a Shape's output -> the dims it holds
        self.followed: set[str] = set()  # every tensor in any of the above
        self.ranged: set[str] = set()  # bounded values a Range makes from sizes alone, alike in every row
        self.beside: dict[str, int] = {}  # an index broadcast with values beside its rows -> its rank
        self.shape_of: dict[str, str] = {}  # a Shape's output -> the tensor it reads
        self.sources: dict[
            str, frozenset[str]
        ] = {}  # a followed tensor -> the inputs its sizes are read from

    def within(self, batch: Collection[str], itself: Callable[[Dim], bool] | None = None) -> RowPositions:
        inner = RowPositions(self.roots, batch, itself)
        inner.found, inner.bounds = dict(self.found), dict(self.bounds)
        inner.sizes, inner.shapes, inner.followed = dict(self.sizes), dict(self.shapes), set(self.followed)
        inner.sources = dict(self.sources)
        inner.beside, inner.shape_of, inner.ranged = dict(self.beside), dict(self.shape_of), set(self.ranged)
        return inner

    def see(
        self,
        node: onnx.NodeProto,
        dims: Callable[[str], Dims | None],
        constant: Constant,
        sized: Callable[[str], bool] = lambda _: False,
        lineage: Callable[[str], frozenset[str]] = lambda _: frozenset(),
    ) -> None:
        """Follow row positions, bounds and sizes through `node`; `sized`: whether a tensor's
        values are made from the batch's size (an offset made from it is no row's own)."""
        if not node.output or not node.output[0]:
            return
        if node.op_type not in _STARTS and self.followed.isdisjoint(node.input):
            return  # nothing followed here comes in (most nodes of a graph)
        out = node.output[0]
        held = self._held(node, dims, constant)
        self.followed.update(node.output)  # a superset is harmless: it only skips the fast path
        self._source(node, lineage)
        if held is not None:
            self.shapes[out] = held
        if node.op_type == "Shape" and node.input:
            self.shape_of[out] = node.input[0]
        if node.op_type == "Where" and len(node.input) == 3 and node.input[2] in self.shape_of:
            # torch's expand(shape): where(shape == -1, 1, shape). Ones or the shape's own sizes
            # in each place: an Expand by it keeps what an Expand by the shape keeps; all three of
            # one length (ones of two broadcast a shape of one to two: every row's place in each
            # row; a tester, session 52).
            ones = constant(1)  # an initializer's value, or a ConstantOfShape's fill read as a bound
            cond, fill, shape = (dims(name) for name in node.input)
            fill = list(ones.shape) if fill is None and ones is not None else fill
            alike = shape is not None and len(shape) == 1 and cond == fill == shape
            filled = self.bounds.get(node.input[1]) == Bound(1, None, 1)
            if alike and (filled or (ones is not None and bool((ones == 1).all()))):
                self.shape_of[out] = self.shape_of[node.input[2]]
        size = held[0] if held is not None and len(held) == 1 else self._size(node, constant)
        if size is not None:
            self.sizes[out] = size
        bound = self._bound(node, dims, constant)
        if bound is not None:
            self.bounds[out] = bound
            if ranged_op(node, self.ranged):
                self.ranged.add(out)
        if node.op_type == "TopK" and len(node.output) > 1 and node.output[1]:
            picked = axis_bound(dims(node.input[0]), int_attribute(node, "axis", -1))
            if picked is not None:
                self.bounds[node.output[1]] = picked
        found = self._index(node, dims, constant, sized)
        if found is not None:
            self.found[out] = replace(found, sources=self.sources.get(out, frozenset()))

    def own_rows(
        self, node: onnx.NodeProto, row_size: RowSize, lineage: Callable[[str], frozenset[str]]
    ) -> bool:
        """A Gather or GatherND whose indices pick each row from its own row: their bounds read
        from the sizes of inputs the data is made from (a bound from another input's steps, of the
        same declared name, let a client send that input wider and read the next request's row;
        a tester, session 51)."""
        if len(node.input) < 2 or node.input[1] not in self.found:
            return False
        index = self.found[node.input[1]]
        exact = index.column and index.stride == 1 and index.offset == Bound(0, None, 0)
        if not exact and not index.sources <= lineage(node.input[0]):
            return False  # arange(N) itself reads no size: its other columns' inputs do not count
        if node.op_type == "Gather" and not index.column:
            return index.within(row_size(node.input[0], int_attribute(node, "axis", 0)))
        nd = node.op_type in ("GatherND", "ScatterND") and not int_attribute(node, "batch_dims", 0)
        if nd and index.column:
            # A ScatterND's index row i writes data row i from updates row i (Wav2Vec2's mask,
            # m[arange(N), lengths - 1] = 1; a tester, session 51).
            return index.within(row_size(node.input[0], 0))
        return False

    def _source(self, node: onnx.NodeProto, lineage: Callable[[str], frozenset[str]]) -> None:
        """The graph inputs whose sizes `node`'s followed values are read from: a Shape's, an
        ArgMax's or a TopK's input's; through other ops, their inputs' (the batch's own size, a
        Range's limit, is alike in every input and is no source)."""
        op = node.op_type
        if op in ("Shape", "ArgMax", "ArgMin", "TopK"):
            found = lineage(node.input[0]) if node.input else frozenset()
        elif op == "Range":  # arange(N) reads no bound; arange(L) of another size is bounded by L's input
            limit = node.input[1] if len(node.input) > 1 else ""
            own = self.itself(self.sizes.get(limit))
            found = frozenset() if own else self.sources.get(limit, frozenset())
        elif op == "Mod" and len(node.input) == 2:  # bounded by its divisor, whatever it divides
            found = self.sources.get(node.input[1], frozenset())  # (GPT-2's lens % S; a tester, s57)
        elif op in ("Expand", "Tile"):  # copies of its input: the shape or repeats read no bound
            found = self.sources.get(node.input[0], frozenset()) if node.input else frozenset()
        else:
            found = frozenset().union(*(self.sources.get(name, frozenset()) for name in node.input))
        for out in node.output:
            if out:
                self.sources[out] = found

    def _held(
        self, node: onnx.NodeProto, dims: Callable[[str], Dims | None], constant: Constant
    ) -> Dims | None:
        """The dims a Shape reads (from `start` to `end`), or a Slice of them keeps."""
        if node.op_type == "Shape" and node.input:
            read = dims(node.input[0])
            return None if read is None else shape_read(node, read)
        if node.op_type == "Slice" and node.input and node.input[0] in self.shapes:
            first, last = constant(1), constant(2)
            steps = constant(4) if len(node.input) > 4 and node.input[4] else np.ones(1, np.int64)
            if first is None or last is None or steps is None or first.size != 1 or last.size != 1:
                return None
            start, end = slice_bound(first.flat[0]), slice_bound(last.flat[0])
            return self.shapes[node.input[0]][start : end : int(steps.flat[0])]
        return None

    def _size(self, node: onnx.NodeProto, constant: Constant) -> Dim:
        """The dim whose size `node` makes, as one value (x.shape[1], cast or unsqueezed)."""
        op = node.op_type
        if op == "Gather" and node.input and int_attribute(node, "axis", 0) == 0:
            shape = self.shapes.get(node.input[0])
            picked = constant(1)
            if shape is not None and picked is not None and picked.size == 1:
                at = int(picked.flat[0])
                return shape[at] if -len(shape) <= at < len(shape) else None
        if op in ("Identity", "Squeeze", "Unsqueeze") or (op == "Cast" and _integer(node)):
            return self.sizes.get(node.input[0]) if node.input else None
        return None

    def _bound(
        self, node: onnx.NodeProto, dims: Callable[[str], Dims | None], constant: Constant
    ) -> Bound | None:
        op = node.op_type
        if op in ("ArgMax", "ArgMin") and node.input:
            return axis_bound(dims(node.input[0]), int_attribute(node, "axis", 0))
        if op == "Mod" and len(node.input) == 2 and not int_attribute(node, "fmod", 0):
            divisor = constant(1)
            if (
                divisor is not None
                and divisor.size == 1
                and divisor.dtype.kind in "iu"
                and divisor.flat[0] > 0
            ):
                return Bound(0, None, int(divisor.flat[0]) - 1)
            size = self.sizes.get(node.input[1])
            return Bound(0, size, -1) if size is not None else None
        if op == "ConstantOfShape":
            fill = attribute(node, "value", None)
            value = onnx.numpy_helper.to_array(fill) if isinstance(fill, onnx.TensorProto) else np.zeros(1)
            return value_bound(value)
        if op == "Range" and len(node.input) == 3:
            return range_bound(constant(0), constant(2), self.sizes.get(node.input[1]), self.batch)
        if op in _KEPT and node.input and (op != "Cast" or _integer(node)):  # int8 wraps (a tester)
            return self.bounds.get(node.input[0])
        if op in ("Reshape", "Slice") and node.input and node.input[0] in self.ranged:
            return self.bounds.get(node.input[0])  # a Range's values, alike in every row: placed anywhere
        if op in ("Add", "Sub") and len(node.input) == 2:
            given, other = self.bounds.get(node.input[0]), constant(1)
            if given is None or other is None or other.size != 1 or other.dtype.kind not in "iu":
                return None
            return given.shifted(int(other.flat[0]) * (1 if op == "Add" else -1))
        return None

    def _index(
        self,
        node: onnx.NodeProto,
        dims: Callable[[str], Dims | None],
        constant: Constant,
        sized: Callable[[str], bool],
    ) -> RowIndex | None:
        op = node.op_type
        if op == "Range":
            start, delta = constant(0), constant(2)
            if len(node.input) < 3 or not self.itself(self.sizes.get(node.input[1])):
                return None
            if start is None or delta is None or start.size != 1 or delta.size != 1:
                return None
            from_zero = start.flat[0] == 0 and delta.flat[0] == 1
            return RowIndex(1, Bound(0, None, 0), 1) if from_zero else None
        given = [self.found.get(name) for name in node.input]
        index = next((found for found in given if found is not None), None)
        if index is None or sum(found is not None for found in given) > 1:
            return None
        if op in ("Identity", "Cast"):
            return index if op == "Identity" or _integer(node) else None
        if op == "Reshape" and given[0] is not None and index.rank == 1 and not index.column:
            return trailing_ones(index, constant(1))
        if op == "Unsqueeze" and given[0] is not None and not index.column:
            return unsqueezed(node, index, constant)
        if op in ("Mul", "Add") and len(node.input) == 2 and not index.column:
            at = 1 if given[0] is not None else 0
            other, value = node.input[at], constant(at)
            shape = list(value.shape) if value is not None else dims(other)
            if sized(other) or not beside_rows(shape, index.rank, self.batch):
                return None  # made from the batch's size, or broadcast across the rows
            self.beside[node.output[0]] = index.rank
            if op == "Mul":
                size = self.sizes.get(other)
                return scaled(index, value, None if size in self.batch else size)
            return shifted(index, value, self.bounds.get(other))
        if op == "Expand" and given[0] is not None and len(node.input) > 1 and not index.column:
            # torch's legacy export broadcasts the indices of x[arange(N), idx] to the shape of
            # their sum: a shape beside the rows leaves each row's place along axis 0.
            broadcast = self.shape_of.get(node.input[1])
            return index if self.beside.get(broadcast or "") == index.rank else None
        if op == "Tile" and given[0] is not None and not index.column:
            repeats = constant(1)  # arange(N).view(N, 1, 1).repeat(1, S, k): rows repeated none
            return index if repeats is not None and repeats.size and int(repeats.flat[0]) == 1 else None
        if op == "Concat" and given[0] is not None and index.rank >= 2:
            # The rows' column first, one wide, beside columns not made from the batch's size.
            last = int_attribute(node, "axis", 0) % index.rank == index.rank - 1
            one_wide = (dims(node.input[0]) or [None])[-1] == 1
            others = not any(sized(name) for name in node.input[1:])
            return replace(index, column=True) if last and one_wide and others else None
        return None


def _integer(node: onnx.NodeProto) -> bool:
    return int_attribute(node, "to", 0) in (onnx.TensorProto.INT32, onnx.TensorProto.INT64)
