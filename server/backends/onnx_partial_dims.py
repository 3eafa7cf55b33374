"""A Tile's, an Expand's or a Pad's output dims that onnx could not name, read from its repeats,
shape or pads where onnx_partial_ints.py knows their entries.

A table of one row made by such an op from amounts the graph reads off another axis's length
(torch's `bias.repeat(1, x.shape[1], 1)`, a position table zero-padded to the sequence's length,
`pos[:, :T].expand(1, -1, -1)`) has every dim `unk__` in onnx's inference. Counted as made from no
batched input (onnx_value_lineage.py), its first dim, 1 at run time, read as a length the load
cannot tell against the batch's axis: x + table was refused batching where each row is its own (a
tester, session 59). Only a dim worked out for certain is filled: a product or sum of numbers, an
input's dim kept by a repeat of 1, a broadcast's 1 or a pad of 0, a name over a 1. A Range's length
too: torch's arange(N), each row's place, is as long as the batch where onnx names it `unk__`, and
arange(T) as long as T (`_ranged`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from server.backends.graph_names import attribute
from server.backends.onnx_mixing_graph import Value, value_shape
from server.backends.onnx_partial_ints import Constant, Dims, Entry, PartialInts

Dim = int | str | None


def partial_dims(
    node: onnx.NodeProto,
    partial: PartialInts,
    dims: Callable[[str], Dims | None],
    constant: Constant,
    held: Callable[[str], Value | None] = lambda name: None,
    maker: Callable[[str], onnx.NodeProto | None] = lambda name: None,
) -> Dims | None:
    """The output dims of `node` (a Tile, an Expand, a Pad, a Resize or Upsample, a Range) with those
    onnx did not name (None, or its own `unk__` names) filled where its amounts' entries tell them;
    None: nothing to add. `held(name)`: a constant the graph holds (an initializer's dims are in no
    value_info); `maker(name)`: the node making a tensor (a Resize's scales, a Concat of constants
    and computed)."""
    if node.op_type == "Range" and len(node.input) == 3 and node.output[0]:
        return _ranged(node, partial, dims, constant, maker)
    upsample = node.op_type == "Upsample" and isinstance(attribute(node, "scales", None), list)  # opset 7
    if node.op_type not in ("Tile", "Expand", "Pad", "Resize", "Upsample") or len(node.input) < 2 - upsample:
        return None
    if not node.output[0]:
        return None
    data, out = dims(node.input[0]), dims(node.output[0])
    if data is None and (value := held(node.input[0])) is not None:
        data = value_shape(value)
    if data is None:
        return None
    if node.op_type in ("Resize", "Upsample"):  # (an Upsample's scales: input 1, or opset 7's attribute)
        worked = resized_dims(node, data, partial, constant, held, maker)
    else:
        amounts = partial.named(node.input[1], constant(1))
        if amounts is None or (node.op_type == "Pad" and len(node.input) > 3 and node.input[3]):
            return None  # (a Pad's `axes`, opset 18: its pads are for those axes alone)
        worked = _worked(node.op_type, data, amounts)
    if worked is None or (out is not None and len(out) != len(worked)):
        return None
    made: Dims = list(out) if out is not None else [None] * len(worked)
    for at, dim in enumerate(worked):
        if dim is not None and not _named(made[at]):
            made[at] = dim
    return made if made != out else None


def _named(dim: Dim) -> bool:
    return isinstance(dim, int) or (isinstance(dim, str) and not dim.startswith("unk__"))


def _worked(op: str, data: Dims, amounts: tuple[Entry, ...]) -> list[Dim] | None:
    """Each output dim, where it is certain (None where not); None: the amounts do not fit."""
    if op == "Tile":
        fits = len(amounts) == len(data)
        return [_times(d, r) for d, r in zip(data, amounts, strict=True)] if fits else None
    if op == "Pad":
        if len(amounts) != 2 * len(data):
            return None
        return [_padded(d, amounts[at], amounts[at + len(data)]) for at, d in enumerate(data)]
    rank = max(len(data), len(amounts))  # Expand: a two-way broadcast, from the right
    ours = [1] * (rank - len(data)) + list(data)
    theirs: list[Entry] = list(amounts)
    theirs[:0] = [1] * (rank - len(amounts))
    return [_broadcast(d, e) for d, e in zip(ours, theirs, strict=True)]


def _times(dim: Dim, repeat: Entry) -> Dim:
    if repeat == 1:
        return dim
    if dim == 1 and isinstance(repeat, int | str) and not isinstance(repeat, bool):
        return repeat if not (isinstance(repeat, int) and repeat < 0) else None
    return dim * repeat if isinstance(dim, int) and isinstance(repeat, int) else None


def _padded(dim: Dim, before: Entry, after: Entry) -> Dim:
    if before == 0 and after == 0:
        return dim
    if isinstance(dim, int) and isinstance(before, int) and isinstance(after, int):
        return dim + before + after if dim + before + after >= 0 else None
    return None


def _broadcast(dim: Dim, entry: Entry) -> Dim:
    if entry == 1:
        return dim
    if dim == 1 and isinstance(entry, int | str):
        return entry if not (isinstance(entry, int) and entry < 1) else None  # a 0 or -1: not certain
    return dim if isinstance(dim, int) and dim == entry else None


def resized_dims(
    node: onnx.NodeProto,
    data: Dims,
    partial: PartialInts,
    constant: Constant,
    held: Callable[[str], Value | None],
    maker: Callable[[str], onnx.NodeProto | None],
) -> list[Dim] | None:
    """A Resize's output dims where certain: its `sizes`' known entries, or its data's dim where its
    scale is 1 (torch's F.interpolate of a position table by scales read off the input: [1, 1, h/4,
    w/4], the 1s written, the rest computed; the table's 1 had read as unknown against the batch's
    axis, a tester, session 59), a number's scaled; None where its `axes` (opset 18) or an aspect
    ratio policy other than stretch reorder what its amounts mean."""
    if any(a.name in ("axes", "keep_aspect_ratio_policy") for a in node.attribute):
        return None
    if len(node.input) > 3 and node.input[3]:  # sizes (opset 11 on)
        sizes = partial.named(node.input[3], constant(3))
        if sizes is None or len(sizes) != len(data):
            return None
        return [e if isinstance(e, str) or (isinstance(e, int) and e > 0) else None for e in sizes]
    at = 2 if len(node.input) > 2 else 1  # scales: input 2 from opset 11, input 1 at opset 10
    given = attribute(node, "scales", None)
    if isinstance(given, list):  # an Upsample's of opset 7
        scales: list[float | None] | None = [float(s) for s in given] if len(given) == len(data) else None
    else:
        scales = _float_entries(node.input[at], held, maker, len(data)) if at < len(node.input) else None
    if scales is None:
        return None
    return [d if s == 1.0 else math.floor(d * s) if isinstance(d, int) and s is not None else None
            for d, s in zip(data, scales, strict=True)]  # fmt: skip


def _float_entries(
    name: str, held: Callable[[str], Value | None], maker: Callable[[str], onnx.NodeProto | None], rank: int
) -> list[float | None] | None:
    """`rank` scales: a constant's, or a Concat's constant parts before one computed part, last."""
    value = held(name)
    if value is not None:
        found = _floats(value)
        return list(found) if len(found) == rank else None
    concat = maker(name)
    if concat is None or concat.op_type != "Concat":
        return None
    entries: list[float | None] = []
    for index, part in enumerate(concat.input):
        value = held(part)
        if value is None:
            if index != len(concat.input) - 1:
                return None  # a computed part before others: where they go is not known
            entries += [None] * (rank - len(entries))
            break
        entries += _floats(value)
    return entries if len(entries) == rank else None


def _floats(value: Value) -> list[float | None]:
    array = numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else np.asarray(value)
    return [float(v) for v in array.reshape(-1)]


def _ranged(
    node: onnx.NodeProto,
    partial: PartialInts,
    dims: Callable[[str], Dims | None],
    constant: Constant,
    maker: Callable[[str], onnx.NodeProto | None] = lambda name: None,
) -> Dims | None:
    """A Range's length where its entries tell it: Range(0, L, 1) is L long, a name (torch's
    arange(N), N = Shape(x)[0]: each row's place, as long as the batch), numbers their count, and
    Range(P, P + T, 1) is T long (GPT-2's positions after a past of P: view(-1, T) of them read as
    of a length the load cannot tell, refused; a tester, session 61)."""
    out = dims(node.output[0])
    if out is not None and (len(out) != 1 or _named(out[0])):
        return None
    start, limit, delta = (partial.named(name, constant(i)) for i, name in enumerate(node.input))
    added = maker(node.input[1])
    if delta == (1,) and added is not None and added.op_type == "Add" and node.input[0] in added.input:
        other = [name for name in added.input if name != node.input[0]]
        length = partial.named(other[0], None) if len(other) == 1 else None
        return [length[0]] if length is not None and len(length) == 1 and isinstance(length[0], str) else None
    if start is None or limit is None or delta is None or not len(start) == len(limit) == len(delta) == 1:
        return None
    first, last, step = start[0], limit[0], delta[0]
    if first == 0 and step == 1 and isinstance(last, str):
        return [last]
    if isinstance(first, int) and isinstance(last, int) and isinstance(step, int) and step != 0:
        return [max(0, math.ceil((last - first) / step))]
    return None
