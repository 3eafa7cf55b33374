"""Values computed from the batch's size (onnx_row_mixing.py asks).

A graph can read the batch's size as a value: Shape(x)[0], Size(x), torch.arange(N). Used as a
shape (a Reshape's, an Expand's, a count) it keeps rows their own; taken as a value beside the data
it does not: x / N divides each request's rows by the size of the batch it was coalesced into,
arange(N) gives each row its place among its batch mates (x + arange(N)[:, None], table[arange(N)],
where(arange(N) == 0, x, 0)), and If(N > 1) chooses a branch by it. Such values are followed from
the Shape or Size that reads them through every op that takes them as a value (Gather, Slice and
Concat position by position on a shape), to where they meet a tensor that carries the batch, of any
type, in any op.

Indices made from each row's place that pick from the row itself (a view's, a per-row pick's) are
told apart by onnx_row_positions.py, which this feeds.

Values a Loop carries through as many iterations as the batch has rows are made from its size (its
scan outputs, one per row, are not). A shape, a size or a count made from it keeps rows only as the
length of the batch's own axis (onnx_size_slots.py). Not read: sizes taken by ops this does not list
as taking a shape. A value read from a graph this cannot follow (computed indices into a shape, a
shape's length not known) is not followed: no proof.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import onnx

from server.backends.graph_names import described, int_attribute, shape_read
from server.backends.onnx_batch_names import BatchNames
from server.backends.onnx_partial_ints import Entry, Made, PartialInts
from server.backends.onnx_rankless import RanklessTensors
from server.backends.onnx_row_positions import RowPositions
from server.backends.onnx_size_positions import (
    EVERY,
    joined_positions,
    length_of,
    picked_positions,
    sliced_positions,
    split_positions,
)
from server.backends.onnx_size_slots import Site, Slots, placed, size_slots

Dims = list[int | str | None]
Constant = Callable[[int], "np.ndarray | None"]  # the value of the node's input i, where known

_KEPT = frozenset({"Identity", "Cast", "Squeeze", "Unsqueeze", "Abs", "Floor", "Ceil", "Round"})
_PICKS = frozenset({"Gather", "GatherND", "GatherElements", "ScatterND", "ScatterElements"})  # index input 1
# Inputs that take a size as a shape or a count: the batch's size there keeps rows their own only as
# the batch's own axis's length (x.view(x.size(0), -1), new_zeros(N, ...); onnx_size_slots.py, and
# `_widens` for a Slice's bounds).
# Not a count that sets another axis's width or a value's place: a TopK's K, a OneHot's depth, a
# Trilu's k, a Pad's or a Split's sizes, a CumSum's axis, a DFT's length (each of those from the
# batch's size gave every request other values or widths, OK; a tester, session 56). A Slice's
# bounds and a Tile's repeats count only where they are the batch's (`_widens`).
# Nor an axis (an Unsqueeze's, a Squeeze's, a reduction's: N - N as axes reduced over the batch;
# a tester, session 56).
_SHAPE_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Expand": (1,), "ConstantOfShape": (0,), "Slice": (1, 2, 3, 4), "Tile": (1,),
    "Resize": (1, 2, 3), "Upsample": (1,), "Loop": (0,), "Shape": (0,), "Size": (0,), "AffineGrid": (1,),
    "MaxUnpool": (2,), "CenterCropPad": (1,),  # output_shape, shape (s55)
}  # fmt: skip


class BatchSizeValues:
    """Tensors whose values depend on the batch's size: the positions that hold it exactly (a
    shape's), or EVERY (computed from it)."""

    def __init__(self, names: BatchNames, partial: PartialInts, makers: Mapping[str, onnx.NodeProto]) -> None:
        self.names = names
        self.makers = makers  # the walk's: a tensor -> the node making it (bodies' too)
        self.partial = partial  # each entry of a small integer tensor, where it can be followed
        self.sized: dict[str, frozenset[int]] = {}  # tensor -> flat positions holding a size (EVERY)
        self.source: dict[str, str] = {}  # tensor -> the node that read the size, for the message
        self.positions = RowPositions(names.roots, names.batch, names.itself)  # arange(N), indices of it
        self.rankless = RanklessTensors()  # of no known rank, perhaps carrying the batch
        self.lineage: Callable[[str], frozenset[str]] = lambda _: frozenset()  # see()'s: the walk's

    def within(self, names: BatchNames, partial: PartialInts) -> BatchSizeValues:
        """A copy for a subgraph: it reads the enclosing graph's values, its own stay its own."""
        inner = BatchSizeValues(names, partial, self.makers)
        inner.sized, inner.source = dict(self.sized), dict(self.source)
        inner.positions = self.positions.within(names.batch, names.itself)
        inner.rankless = self.rankless.within()
        return inner

    def see(
        self,
        node: onnx.NodeProto,
        dims: Callable[[str], Dims | None],
        constant: Constant,
        lineage: Callable[[str], frozenset[str]] = lambda _: frozenset(),
    ) -> None:
        """Follow the batch's size through `node` (its inputs' dims and constant values given;
        `lineage`: the graph inputs a tensor is made from)."""
        self.lineage = lineage
        if not any(node.output):  # (an RNN's first output may be left unnamed: its others count)
            return
        self.names.grew(node, dims)
        self.rankless.see(node, dims, lambda name: self._from_batched(name, dims), constant, self.names)
        read = node.op_type in ("Shape", "Size", "NonZero") or any(name in self.sized for name in node.input)
        found = self._follow(node, dims, constant) if read else frozenset()
        looped = node.op_type == "Loop" and bool(node.input) and node.input[0] in self.sized
        if found or looped:
            # Each output: a Split's share of the positions; any other op's, every value (a Loop run
            # N times: its carried count, and its scan outputs, Cast(iteration) stacked as arange(N);
            # testers, sessions 56 and 57).
            source = next((self.source[name] for name in node.input if name in self.source), described(node))
            data = self.sized.get(node.input[0], EVERY) if node.input else EVERY
            shares = None if looped else split_positions(node, data, dims(node.input[0]), constant)
            for at, name in enumerate(node.output):
                held = EVERY if looped or at else found
                held = shares[at] if shares is not None and at < len(shares) else held
                if name and held:
                    self.sized[name] = held
                    self.source[name] = source
        if node.op_type == "Reshape" and len(node.input) > 1 and node.input[1] in self.sized:
            self._name_rows(node, dims, constant)
        self.positions.see(node, dims, constant, lambda name: name in self.sized, lineage)

    def returned(
        self,
        node: onnx.NodeProto,
        body: onnx.GraphProto,
        inner: BatchSizeValues,
        dims: Callable[[str], Dims | None],
    ) -> None:
        """A body's values made from the batch's size (read from the enclosing graph: an If's
        branch returning Cast(N), a Scan adding it to its state) make the node's outputs so; a Loop's
        condition so made makes all of its outputs so (its count of iterations; a tester, s57).
        `dims`: the body's shapes (an If's outputs of no known rank are read branch by branch)."""
        self.rankless.returned(node, body, dims, inner.names.batch, inner.names.grown, inner.rankless)
        values = [out.name for out in body.output]
        looped = node.op_type == "Loop" and bool(values) and values[0] in inner.sized
        for name, value in zip(node.output, values[1:] if node.op_type == "Loop" else values, strict=False):
            if name and (looped or value in inner.sized):
                self.sized[name] = EVERY
                self.source[name] = inner.source.get(value) or inner.source.get(values[0], described(node))

    def unread(
        self, node: onnx.NodeProto, dims: Callable[[str], Dims | None], constant: Constant
    ) -> str | None:
        """Why a Reshape of the batch with two or more output dims the load cannot work out may
        move rows: its shape's first entry is known not to keep the batch there (x.view(k, -1).T,
        k read by an op the load does not follow; a tester, s57). A first entry of the batch's size,
        a 0 or a -1 (GroupNorm's [0, G, -1], a pixel shuffle's view(N, C, r, r, H, W), Swin's
        view(-1, ...)) leaves it to the reshape's own reading, as before."""
        if node.op_type != "Reshape" or len(node.input) < 2:
            return None
        data, out = dims(node.input[0]), dims(node.output[0])
        if not data or out is None or self.names.row_size(data[0]) != 1:
            return None  # the batch does not lead the data: the reshape's own reading
        unknown = [
            dim for dim in out if not isinstance(dim, int) and dim not in self.names.batch and dim not in data
        ]
        entries = self.partial.named(node.input[1], constant(1))
        if len(unknown) < 2 or not entries:
            return None
        first, held = entries[0], self.sized.get(node.input[1])
        batch = self.names.batch
        if (
            (held is not None and (held == EVERY or 0 in held))
            or (isinstance(first, int) and first in (0, -1))
            or (isinstance(first, str) and first in batch)
            or (isinstance(first, Made) and not first.names.isdisjoint(batch))
        ):
            return None
        shown = f"{self.names.shown(data)} to {self.names.shown(out)}"
        return (
            f"{described(node)} reshapes '{node.input[0]}' {shown}: its first dim is not the batch's "
            "and two of its dims the load cannot work out, so it cannot tell the batch's rows stay apart"
        )

    def picked(self, name: str) -> None:
        """`name` holds values picked by each row from its own row: not made from the size."""
        self.sized.pop(name, None)
        self.source.pop(name, None)

    def made_from_size(self, name: str) -> str | None:
        """Why a graph output mixes rows: its values are made from the batch's size (arange(N)
        returned, or a table looked up by it)."""
        if name not in self.sized:
            return None
        return (
            f"its values are made from the batch's size by {self.source[name]}: a request's answer "
            "depends on the rows it is batched with"
        )

    def reads_size(
        self, node: onnx.NodeProto, dims: Callable[[str], Dims | None], constant: Constant | None = None
    ) -> str | None:
        """Why `node` mixes rows: it takes a value made from the batch's size (or each row's place
        in it) as a value, not a shape, beside a tensor that carries the batch; or an If chooses
        its branch by it. Indices made from each row's own place (onnx_row_positions.py) are not
        read here: the Gather or GatherND that takes them is."""
        if not any(name in self.sized for name in node.input):
            return None
        if node.output and node.output[0] in self.positions.found:
            return None
        shapes = _SHAPE_INPUTS.get(node.op_type, ())
        valued = [
            name
            for i, name in enumerate(node.input)
            if name in self.sized and (i not in shapes or self._widens(node, i, dims, constant))
        ]
        if not valued:
            self._mark(node, dims, constant)
            return None
        made = f"'{valued[0]}', made from the batch's size by {self.source[valued[0]]}"
        if list(node.input).index(valued[0]) in shapes:
            return (
                f"{described(node)} takes {made}, as a shape, a size or a count elsewhere than the "
                "batch's own axis: a request's answer would be shaped by how many were batched with it"
            )
        if node.op_type == "If":
            return f"{described(node)} chooses its branch by the batch's size: its condition is {made}"
        for name in node.input:
            if name and name not in self.sized and any(d in self.names.batch for d in dims(name) or []):
                if node.op_type in _PICKS and len(node.input) > 1 and valued[0] == node.input[1]:
                    return (
                        f"{described(node)} picks from '{name}' at indices {made}, each row's place "
                        "in the batch: the load cannot prove each row picks only from its own (an "
                        "ArgMax, TopK or Mod over the row's steps, or constants, would bound them)"
                    )
                return f"{described(node)} takes the batch's size as a value: it meets '{name}' with {made}"
        return None

    def whole(
        self, node: onnx.NodeProto, axis: int, dims: Callable[[str], Dims | None], constant: Constant
    ) -> bool:
        """Whether a Slice keeps every row of its data's axis `axis`: from 0 to the batch's size
        itself, step 1 (`x[:N]`, `hidden[: x.size(0)]`; refused as computed bounds before s57)."""
        if node.op_type != "Slice" or len(node.input) < 3 or node.input[2] not in self.sized:
            return False
        data, starts = dims(node.input[0]), constant(1)
        axes = constant(3) if len(node.input) > 3 and node.input[3] else None
        steps = constant(4) if len(node.input) > 4 and node.input[4] else None
        computed = [
            i
            for i, given in ((3, axes), (4, steps))
            if len(node.input) > i and node.input[i] and given is None
        ]
        if data is None or starts is None or computed or not 0 <= axis < len(data):
            return False
        if self.names.row_size(data[axis]) != 1:
            return False  # a fold of the batch ([N*T]): its first N values are not its rows
        listed = [int(a) % len(data) for a in axes.flat] if axes is not None else list(range(starts.size))
        if listed.count(axis) != 1 or starts.size != len(listed):
            return False
        at = listed.index(axis)
        ends = self.slots(node.input[2], self.partial.named(node.input[2], None))
        step = 1 if steps is None or steps.size != len(listed) else int(steps.flat[at])
        return ends is not None and ends.get(at) is True and int(starts.flat[at]) == 0 and step == 1

    def _widens(
        self, node: onnx.NodeProto, index: int, dims: Callable[[str], Dims | None], constant: Constant | None
    ) -> bool:
        """Whether a shape, a size or a count made from the batch's size sets anything but the
        batch's own axis (onnx_size_slots.py; `x[:, :N]`, a Slice's bound, read here: `x[:N]`
        keeps rows)."""
        if node.op_type != "Slice":
            return self._placed(node, index, dims, constant) is None
        data = dims(node.input[0]) if node.input else None
        axes = constant(3) if constant is not None and len(node.input) > 3 and node.input[3] else None
        starts = constant(1) if constant is not None else None  # without axes: one per start, from 0
        default = list(range(np.asarray(starts).size)) if starts is not None else []
        listed = [int(a) for a in np.asarray(axes).reshape(-1)] if axes is not None else default
        computed_axes = axes is None and len(node.input) > 3 and bool(node.input[3])
        if index == 3 or computed_axes or data is None or not listed:
            return True
        held = self.sized[node.input[index]]
        at = range(len(listed)) if held == EVERY else held  # which bounds hold the size
        return any(p >= len(listed) or data[listed[p] % len(data)] not in self.names.batch for p in at)

    def _placed(
        self, node: onnx.NodeProto, index: int, dims: Callable[[str], Dims | None], constant: Constant | None
    ) -> list[int] | None:
        """The output axes a shape input made from the batch's size makes the batch's (None: it
        sets another)."""
        name = node.input[index]
        value = constant(index) if constant is not None else None
        entries = self.partial.named(name, value)
        slots = self.slots(name, entries)
        data = dims(node.input[0]) if index != 0 else None
        given = constant(0) if index != 0 and constant is not None else None  # the data, a constant
        if data is None and given is not None:
            data = list(given.shape)  # a constant's dims: an initializer has no value info
        if node.op_type == "Reshape" and node.input[0] not in self.sized and not self.lineage(node.input[0]):
            return None  # a constant cut into as many rows as the batch has (a tester, s57)
        length = length_of(dims(name), value) if entries is None else len(entries)
        site = Site(data, dims(node.output[0]) if node.output else None, length)
        return placed(node, index, slots, site, self.names.whole)

    def _name_rows(
        self, node: onnx.NodeProto, dims: Callable[[str], Dims | None], constant: Constant
    ) -> None:
        """A Reshape's output axes that its shape gives the batch's size itself, named the batch's
        where onnx could not name them (a shape through a Where): read so by the reshape's reading
        and by the ops after it."""
        out, name = dims(node.output[0]), node.input[1]
        for at, itself in (self.slots(name, self.partial.named(name, constant(1))) or {}).items():
            if itself and out is not None and at < len(out) and isinstance(out[at], str):
                self.names.mark(out[at])

    def _mark(
        self, node: onnx.NodeProto, dims: Callable[[str], Dims | None], constant: Constant | None
    ) -> None:
        """The output axes a constant row expanded or tiled to the batch's size make the batch's,
        where onnx could not name them (a legacy expand's shape comes through a Where): an op
        along them is read as along the batch."""
        out = dims(node.output[0]) if node.output and node.output[0] else None
        for i in _SHAPE_INPUTS.get(node.op_type, ()):
            if out is None or i >= len(node.input) or node.input[i] not in self.sized:
                continue
            for axis in self._placed(node, i, dims, constant) or []:
                if axis < len(out) and isinstance(out[axis], str):
                    self.names.mark(out[axis])

    def slots(self, name: str, entries: tuple[Entry, ...] | None) -> Slots | None:
        """Which of sized tensor `name`'s entries hold the batch's size itself (onnx_size_slots.py)."""
        held = self.sized[name]
        return size_slots(None if held == EVERY else held, entries, self.names.whole, self.names.made)

    def _from_batched(self, name: str, dims: Callable[[str], Dims | None]) -> bool:
        """Whether `name` is made from an input that carries the batch."""
        return any((dims(source) or [None])[0] in self.names.batch for source in self.lineage(name))

    def _follow(
        self, node: onnx.NodeProto, dims: Callable[[str], Dims | None], constant: Constant
    ) -> frozenset[int]:
        """The positions of `node`'s output that hold a size computed from the batch's (EVERY:
        where it lands is not known, or every value is computed from it)."""
        op = node.op_type
        if op in ("Shape", "Size"):
            source = node.input[0] if node.input else ""
            read = dims(source) if source else None
            maker = self.makers.get(source)
            of_shape = maker is not None and maker.op_type == "Shape"  # a Size of it is a rank
            if of_shape:
                return frozenset()  # a rank, whatever the batch's size (Silero VAD's If of two ranks)
            if source in self.sized and not all(isinstance(d, int) for d in read or [None]):
                return EVERY  # the shape of values made from the size: Range(0, N)'s (a tester, s57)
            branched = self.rankless.shape_positions(node, source) if read is None else None
            if branched is not None and (branched != EVERY or self._from_batched(source, dims)):
                return branched if node.op_type == "Shape" or not branched else EVERY  # an If's, by branch
            if read is None and source in self.rankless.names:
                return EVERY  # no rank known: any entry may be the batch's (x / Shape(lo)[0]; s64)
            return self._read(node, read, self._from_batched(source, dims))
        if (
            op == "NonZero"
            and node.input
            and any(dim in self.names.batch for dim in dims(node.input[0]) or [])
        ):
            return EVERY  # the places of a batch's rows, as arange(N) (a tester, session 52)
        taken = [self.sized.get(name, frozenset()) for name in node.input]
        if not any(taken):
            return frozenset()
        if op in _KEPT or (op == "Reshape" and taken[0]):
            return taken[0]
        if op in ("Gather", "Slice") and taken[0] and len(dims(node.input[0]) or [0, 0]) != 1:
            return EVERY  # a table of sizes ([2, 2], or of no known rank): its rows are not flat positions
        if op == "Gather" and int_attribute(node, "axis", 0) == 0 and taken[0]:
            return picked_positions(taken[0], constant(1), length_of(dims(node.input[0])))
        if op == "Slice" and taken[0]:
            return sliced_positions(taken[0], node, constant, length_of(dims(node.input[0])))
        if op == "Concat":
            return joined_positions(
                taken, [length_of(dims(name), constant(i)) for i, name in enumerate(node.input)]
            )
        shapes = _SHAPE_INPUTS.get(op, ())
        # A Reshape of the batch is read with its folds after this (reads_size): a misplaced size mixes it.
        later = op == "Reshape" and any(dim in self.names.batch for dim in dims(node.input[0]) or [])
        widens = not later and any(
            t and self._widens(node, i, dims, constant) for i, t in enumerate(taken) if i in shapes
        )
        return EVERY if widens or any(t for i, t in enumerate(taken) if i not in shapes) else frozenset()

    def _read(self, node: onnx.NodeProto, shape: Dims | None, batched: bool = False) -> frozenset[int]:
        """A Shape's positions that hold the batch's size (or a fold's), or a Size's value. A Size
        of a tensor made from a batched input, of no known rank, a dim not known or a name onnx made
        up (`unk__`: 2N of Concat(x, x), N - 1 of x[1:]), counts as made from it (x / Size(it) had
        loaded batched; testers, s62). Not a Shape's entries: a table as long as one, added across
        each row, keeps rows (GPT-2's past length is such an entry)."""
        if node.op_type == "Size" and batched and (shape is None or any(_made_up(dim) for dim in shape)):
            return EVERY
        if shape is None:
            return frozenset()

        def batch(dim: int | str | None) -> bool:  # the batch's axis, or one whose length is made from it
            return isinstance(dim, str) and (dim in self.names.batch or dim in self.names.grown)

        if node.op_type == "Size":
            return EVERY if any(batch(dim) for dim in shape) else frozenset()
        return frozenset(at for at, dim in enumerate(shape_read(node, shape)) if batch(dim))


def _made_up(dim: int | str | None) -> bool:
    """A dim not known, or named by onnx's inference for a length it could not tell."""
    return dim is None or (isinstance(dim, str) and dim.startswith("unk__"))
