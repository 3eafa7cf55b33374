"""Where the batch's size lands in a small integer tensor made from a shape, position by position
(onnx_batch_size_value.py asks): a Gather's or a Slice's pick of a shape, a Concat of pieces, a
Split of a shape into parts (`n, t, c = x.shape`). A position not worked out is EVERY's: every value
may hold a size computed from it."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np
import onnx

from server.backends.graph_names import attribute, int_attribute, slice_bound

Dims = list[int | str | None]
Constant = Callable[[int], "np.ndarray | None"]  # the value of the node's input i, where known
EVERY = frozenset({-1})  # every value of the tensor depends on the batch's size


def split_positions(
    node: onnx.NodeProto, held: frozenset[int], shape: Dims | None, constant: Constant
) -> list[frozenset[int]] | None:
    """Each output's positions that hold the size, of a Split of a 1-D tensor of known length into
    known parts (`n, t, c = x.shape` as a Split); None: not a Split so read."""
    length = length_of(shape)
    if (
        node.op_type != "Split"
        or held == EVERY
        or length is None
        or int_attribute(node, "axis", 0) not in (0, -1)
    ):
        return None
    parts = split_parts(node, length, constant)
    if parts is None:
        return None
    starts = np.cumsum([0, *parts])
    return [frozenset(p - int(a) for p in held if a <= p < b) for a, b in itertools.pairwise(starts)]


def split_parts(node: onnx.NodeProto, length: int, constant: Constant) -> list[int] | None:
    """A Split's parts along a 1-D tensor of `length`: given, or equal (the last smaller, opset 18's
    `num_outputs`); None where computed at run time (a tester, s57: [0, 2] had put N in the second)."""
    computed = len(node.input) > 1 and bool(node.input[1])
    given = constant(1) if computed else None
    if computed and given is None:
        return None
    parts = attribute(node, "split", None) if given is None else [int(v) for v in given.flat]
    if not isinstance(parts, list):
        count = len(node.output)
        each = -(-length // count)
        parts = [min(each, max(length - k * each, 0)) for k in range(count)]
    if sum(parts) != length or len(parts) != len(node.output) or min(parts, default=0) < 0:
        return None
    return [int(part) for part in parts]


def length_of(shape: Dims | None, value: np.ndarray | None = None) -> int | None:
    """A 1-D tensor's length where fixed (a scalar's: 1), from its dims or its constant value."""
    if shape is None and value is not None and value.ndim <= 1:
        return value.size
    if shape is None or len(shape) > 1:
        return None
    if not shape:
        return 1
    return shape[0] if isinstance(shape[0], int) else None


def picked_positions(sized: frozenset[int], indices: np.ndarray | None, length: int | None) -> frozenset[int]:
    """Gather's positions that hold a size (constant indices into a vector of known length, or
    indices from its start: a Shape of an If's output of no known rank, read branch by branch)."""
    if indices is None or sized == EVERY or (length is None and (indices < 0).any()):
        return EVERY
    picks = [int(i) % length if length else int(i) for i in indices.flat]
    return frozenset(k for k, i in enumerate(picks) if i in sized)


def sliced_positions(
    sized: frozenset[int], node: onnx.NodeProto, constant: Constant, length: int | None
) -> frozenset[int]:
    if sized == EVERY:
        return EVERY
    first, last, axes, steps = (
        constant(i) if i < len(node.input) and node.input[i] else None for i in range(1, 5)
    )
    if len(node.input) == 1:  # before opset 10 its bounds are attributes (torch's opset-9 exports)
        first, last, axes = (slice_attribute(node, name) for name in ("starts", "ends", "axes"))
    if first is None or last is None:
        return EVERY
    if axes is not None and [int(a) for a in axes.flat] not in ([0], [-1]):
        return EVERY
    step = int(steps.flat[0]) if steps is not None else 1
    start, end = slice_bound(first.flat[0]), slice_bound(last.flat[0])
    if length is None and (start < 0 or end < 0 or step < 1):
        return EVERY  # counted from the end of a vector of no known length
    # (no length: up to the last position held, past which no entry is one)
    kept = (
        range(length)[start:end:step] if length is not None else range(start, min(end, max(sized) + 1), step)
    )
    return frozenset(k for k, i in enumerate(kept) if i in sized)


def joined_positions(taken: Sequence[frozenset[int]], lengths: Sequence[int | None]) -> frozenset[int]:
    """Concat's positions that hold a size: each input's, shifted by the lengths before it (an input
    of no known length is placed where none after it holds one: Shape(t)[:1] of an If's output of
    no known rank, before a constant's)."""
    if any(t == EVERY for t in taken):
        return EVERY
    held: set[int] = set()
    offset = 0
    for at, (positions, length) in enumerate(zip(taken, lengths, strict=True)):
        held.update(offset + p for p in positions)
        if length is None:
            return frozenset(held) if not any(taken[at + 1 :]) else EVERY
        offset += length
    return frozenset(held)


def slice_attribute(node: onnx.NodeProto, name: str) -> np.ndarray | None:
    """An opset-9 Slice's `starts`, `ends` or `axes` attribute as an array; None where absent."""
    found = attribute(node, name, None)
    return np.asarray(found, np.int64) if isinstance(found, list) else None
