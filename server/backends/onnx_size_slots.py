"""Where a shape, a size or a count made from the batch's size puts it (onnx_batch_size_value.py
asks, for the inputs it lists as taking a shape).

The batch's size keeps each request's rows its own only as the length of the batch's own axis:
x.view(N, -1), cls.expand(N, -1, -1), x.new_zeros(N, 1), a Resize's sizes Concat(Shape(x)[:2],
[h, w]), an AffineGrid's [N, C, H, W]. Anywhere else it sets a width, a crop or an axis by how many
requests were batched together: a tester, session 56, had a Resize to sizes [N, 1, N], a Reshape to
(min(N, 2), -1) before a Softmax, an Expand to [N, min(N, 2)], an AffineGrid's, a MaxUnpool's and a
CenterCropPad's sizes from it all batched, answered with other widths or batch mates' values, OK.

Each entry of such an input is read where it lands (onnx_partial_ints.py follows it through
Concat, Gather, Slice, arithmetic, a legacy expand's Equal and Where): the size itself (its dim's
name), a value made from it (Made), or neither. An input whose entries cannot be followed is no
proof. A Reshape's entry made from the size (N * H, a multi-head fold) keeps rows where its output's
axis there is the batch's or a fold of it (onnx_reshape_rows.py works out the one dim onnx cannot
name), so a Reshape is asked after it is read.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import NamedTuple

import onnx

from server.backends.graph_names import attribute
from server.backends.onnx_partial_ints import Entry, Made

Dims = list[int | str | None]
Slots = dict[int, bool]  # an entry made from the batch's size -> it is the size itself (not computed)


class Site(NamedTuple):
    """A node's data input's dims, its output's, and the length of the input holding the size."""

    data: Dims | None
    out: Dims | None
    length: int | None


def size_slots(
    exact: frozenset[int] | None,
    entries: Sequence[Entry] | None,
    batch: Collection[str],
    grown: Collection[str] = (),
) -> Slots | None:
    """The entries of an input made from the batch's size: `exact`, the positions that hold the
    size itself where onnx_batch_size_value.py knows them (None: it knows only that the input is
    computed from it), else read from `entries`. None: not known which. A length made from the
    size that onnx named anew (`grown`: N - 1 of x[1:]), or a position `exact` holds whose entry is
    known to be another length, is computed, not the size itself: ConstantOfShape(Shape(x[1:]) + 0)
    summed over its first axis had loaded batched (a tester, s64)."""
    if exact is not None:
        known = list(entries) if entries is not None else []
        return {at: at >= len(known) or known[at] is None or known[at] in batch for at in exact}
    if entries is None:
        return None
    sized = {*batch, *grown}  # names of lengths made from the size
    slots: Slots = {}
    for at, entry in enumerate(entries):
        if isinstance(entry, str) and entry in batch:
            slots[at] = True
        elif entry is None or (entry in sized if isinstance(entry, str) else _made_from(entry, sized)):
            slots[at] = False  # computed from the size, or not followed: it may be
    return slots


def _made_from(entry: Entry, names: Collection[str]) -> bool:
    return isinstance(entry, Made) and not entry.names.isdisjoint(names)


def placed(
    node: onnx.NodeProto,
    index: int,
    slots: Slots | None,
    site: Site,
    batch: Collection[str],
) -> list[int] | None:
    """The output axes the batch's size in input `index` of `node` makes the batch's (an unbatched
    row expanded or tiled to it), or None where it sets anything but the batch's own axis."""
    op = node.op_type
    data, out = site.data, site.out
    if op in ("Shape", "Size", "Loop"):
        return []  # a Loop's values carried over a count of rows are onnx_batch_size_value.py's
    if slots is None:
        return None
    if not slots:
        return []
    if op == "Reshape":  # the batch's axis or a fold of it, as the reshape's reading names its output
        if out is None:  # not named (a shape of no known length): only as the first axis, the data's too
            first, *rest = data or [None]
            led = isinstance(first, str) and first in batch and not any(dim in batch for dim in rest)
            return [] if led and slots == {0: True} else None
        # (its other dims, where the load cannot work them out, are onnx_batch_size_value.unread's)
        return [] if all(p < len(out) and out[p] in batch for p in slots) else None
    if not all(slots.values()):
        return None  # a width computed from the size: min(N, 2), N + 1
    carried = [axis for axis, dim in enumerate(data or []) if dim in batch]
    if op in ("Expand", "ConstantOfShape", "Tile"):
        return _grown(op, sorted(slots), site, carried)
    if (op == "Resize" and index == 3) or op == "CenterCropPad":
        listed = _axes(node, data)
        kept = listed is not None and all(p < len(listed) and listed[p] in carried for p in slots)
        return [] if kept else None
    if op == "MaxUnpool" or op == "AffineGrid":  # a full output shape: the data's batch's axis leads
        return [] if list(slots) == [0] and (op == "AffineGrid" or carried == [0]) else None
    return None  # a Resize's scales or roi, an Upsample's scales: the batch's size as a factor


def _grown(op: str, at: list[int], site: Site, carried: list[int]) -> list[int] | None:
    """An Expand's shape, a ConstantOfShape's or a Tile's repeats holding the batch's size: where
    the data carries the batch, only at its axis (an Expand's shape aligned with it from the end;
    a Tile's repeat of it copies the batch); where it does not, once, making that axis the batch's
    (a constant row tiled or expanded to the batch)."""
    if op == "ConstantOfShape":
        return at if len(at) == 1 else None
    data = site.data
    if data is None:
        return None
    if op == "Tile":
        return at if len(at) == 1 and not carried and at[0] < len(data) and data[at[0]] == 1 else None
    if site.length is None:
        return None
    rank = max(len(data), site.length)
    axes = [rank - site.length + p for p in at]  # the output's axes they set
    if carried:
        ahead = rank - len(data)
        return [] if all(a - ahead in carried for a in axes) else None
    return axes if len(axes) == 1 else None


def _axes(node: onnx.NodeProto, data: Dims | None) -> list[int] | None:
    """The data's axes a Resize's sizes or a CenterCropPad's shape list, in order."""
    if data is None:
        return None
    axes = attribute(node, "axes", None)
    if isinstance(axes, list):
        return [int(a) % len(data) for a in axes] if data else None
    return list(range(len(data)))
