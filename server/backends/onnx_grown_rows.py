"""Ops that may add rows to the batch's axis or copy the batch along another: a Pad or a Tile whose
amounts the graph computes, an Expand that puts the batch on a second axis, a Resize that may scale
the batch's axis (onnx_row_mixing.py asks). A tester of session 51: pads [x.shape[1] // 4, 0, 0,
0] gave each request the row before it, x.repeat(k, 1) with k read from the shape gave rows of other
requests, and x.unsqueeze(0).expand(N, N, 4) gave every request the whole batch, all OK.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import NamedTuple

import numpy as np
import onnx

from server.backends.graph_names import attribute, described
from server.backends.onnx_partial_ints import Entries, Entry, PartialInts

Dims = Sequence[int | str | None]
COMPUTED = "computed at run time: the load cannot tell it adds no rows"
Constant = Callable[[int], "np.ndarray | None"]  # the value of the node's input i, where known


def grown_rows(
    node: onnx.NodeProto,
    dims: Callable[[str], Dims | None],
    constant: Constant,
    partial: PartialInts,
    batch: Collection[str],
    opset: int,
) -> str | None:
    """Why a Pad or Tile of computed amounts, an Expand or a Resize may add rows or copy the batch,
    or a Squeeze of no axes drop it (None: it does not, or its constant amounts are
    onnx_mixing_ops.py's)."""
    given = dims(node.input[0])
    if node.op_type == "Squeeze":  # (a small weight's dims: its value's, none in the inference's)
        held = constant(0) if given is None else None
        return squeezed_batch(node, list(held.shape) if held is not None else given, batch)
    if node.op_type == "Expand":
        shape = partial.entries(node.input[1], constant(1)) if len(node.input) > 1 else None
        return copied_batch(node, given, dims(node.output[0]), batch, shape)
    if node.op_type in ("Resize", "Upsample"):
        sizes = partial.named(node.input[3], constant(3)) if len(node.input) > 3 and node.input[3] else None
        roi = constant(1) if opset >= 11 and len(node.input) > 1 and node.input[1] else None
        scales = _scales(node, opset, constant)
        return resized_batch(node, given, dims(node.output[0]), Resizing(scales, sizes, roi), batch)
    if len(node.input) < 2 or constant(1) is not None or (opset < 11 and node.op_type == "Pad"):
        return None  # constant amounts: onnx_mixing_ops.py reads them
    amounts = partial.entries(node.input[1], None)
    axes = partial.entries(node.input[3], constant(3)) if len(node.input) > 3 and node.input[3] else None
    return computed_amounts(node, given, amounts, axes, batch)


def squeezed_batch(node: onnx.NodeProto, given: Dims | None, batch: Collection[str]) -> str | None:
    """Why a Squeeze of no axes may drop the batch's axis: it drops every axis of length 1, the
    batch's where a request runs alone (torch's x.squeeze() on [N, 1, 8]: alone (8,), batched
    (4, 8); a tester, session 61)."""
    if any(a.name == "axes" for a in node.attribute) or (len(node.input) > 1 and node.input[1]):
        return None
    if given is None:  # (x passed through a Loop: a tester, session 61)
        return f"{described(node)} squeezes every axis of length 1 of '{node.input[0]}', of no known shape"
    at = next((k for k, dim in enumerate(given) if dim in batch), None)
    if at is None:
        return None
    return (
        f"{described(node)} squeezes every axis of length 1 of '{node.input[0]}' {list(given)}: "
        f"the batch's, axis {at}, where a request runs alone"
    )


def computed_amounts(
    node: onnx.NodeProto,
    dims: Dims | None,
    amounts: Entries | None,
    axes: Entries | None,
    batch: Collection[str],
) -> str | None:
    """Why a Pad or Tile whose pads or repeats are not all constants may add rows: an amount on an
    axis that carries the batch is computed (`amounts`: the entries known, None: none known).
    `axes`: a Pad's axes input where it has one (opset 18)."""
    if dims is None:
        return None
    carried = [axis for axis, dim in enumerate(dims) if isinstance(dim, str) and dim in batch]
    if not carried:
        return None
    rank = len(dims)
    for axis in carried:
        if node.op_type == "Tile":
            known = amounts is not None and axis < len(amounts) and amounts[axis] == 1
        else:
            known = _padded_by_zero(amounts, axes, axis, rank)
        if not known:
            what = "repeats" if node.op_type == "Tile" else "pads"
            return f"{described(node)} may add rows to the batch's axis {axis}: its {what} are {COMPUTED}"
    return None


def _padded_by_zero(pads: Entries | None, axes: Entries | None, axis: int, rank: int) -> bool:
    if pads is None:
        return False
    listed = list(range(rank)) if axes is None else [a % rank for a in axes if a is not None]
    if axes is not None and None in axes:
        return False
    if axis not in listed:
        return True
    at, half = listed.index(axis), len(pads) // 2
    return at < half and pads[at] == 0 and pads[half + at] == 0


def copied_batch(
    node: onnx.NodeProto,
    given: Dims | None,
    made: Dims | None,
    batch: Collection[str],
    shape: Entries | None = None,
) -> str | None:
    """Why an Expand pairs rows: its output carries the batch on an axis where its input had one
    value (or none), while the input carries the batch on another; or its output has a fixed
    length where its input carries the batch (alone a request's row is copied to that length)."""
    if given is None or made is None or len(given) > len(made):
        return None
    ahead = len(made) - len(given)
    own = [ahead + axis for axis, dim in enumerate(given) if isinstance(dim, str) and dim in batch]
    if not own:
        return None
    # Expand(x [N, 3], [4, 3]): alone 4 copies of the row, batched the 4 rows (s62); the length read
    # from its output's dims, or its shape's entries (Shape of a stored table: output [?, 3]).
    told = list(shape) if shape is not None and len(shape) == len(made) else [None] * len(made)
    for axis in own:
        fixed = made[axis] if isinstance(made[axis], int) else told[axis]
        if isinstance(fixed, int) and fixed > 1:
            return (
                f"{described(node)} broadcasts the batch's axis {axis - ahead} of '{node.input[0]}' "
                f"{list(given)} against a fixed length {fixed} of its output {list(made)}"
            )
    for axis, dim in enumerate(made):
        widened = axis < ahead or given[axis - ahead] == 1
        if widened and isinstance(dim, str) and dim in batch:
            return (
                f"{described(node)} copies the whole batch along axis {axis} of its output {list(made)}: "
                f"its input carries the batch's rows on axis {own[0]}"
            )
    return None


def _scales(node: onnx.NodeProto, opset: int, constant: Constant) -> list[float] | None:
    """A Resize's or Upsample's scales where the graph holds them (None: sizes, or computed)."""
    given = attribute(node, "scales", None)  # Upsample before opset 9
    if isinstance(given, list):
        return [float(v) for v in given]
    at = 1 if node.op_type == "Upsample" or opset < 11 else 2
    found = constant(at) if len(node.input) > at and node.input[at] else None
    return None if found is None or found.size == 0 else [float(v) for v in found.reshape(-1)]


class Resizing(NamedTuple):
    """What a Resize's inputs say, where the graph holds them (None: computed, or not given)."""

    scales: list[float] | None
    sizes: tuple[Entry, ...] | None  # a dim's name where a Shape read it (partial ints)
    roi: np.ndarray | None  # tf_crop_and_resize's [starts..., ends...] over its axes


def resized_batch(
    node: onnx.NodeProto, given: Dims | None, made: Dims | None, told: Resizing, batch: Collection[str]
) -> str | None:
    """Why a Resize may not keep the batch's rows one for one: a scale there not 1, a size for it
    that is not the batch's own (a Shape's entry for it: torch's F.interpolate(x, size=...),
    Concat(Shape(x)[:2], [h, w])), a crop by `roi` other than the whole axis. Computed and not
    followed, no proof: refused (a size of (N + 1) // 2 then back to N had been taken as kept and
    batched, wrong, OK; a tester, session 55)."""
    if given is None:
        return None
    carried = [axis for axis, dim in enumerate(given) if isinstance(dim, str) and dim in batch]
    axes = attribute(node, "axes", None)
    listed = (
        [int(a) % len(given) for a in axes] if isinstance(axes, list) and given else list(range(len(given)))
    )
    mode = attribute(node, "coordinate_transformation_mode", b"")
    cropped = mode in (b"tf_crop_and_resize", "tf_crop_and_resize")
    for axis in (axis for axis in carried if axis in listed):
        at = listed.index(axis)
        if told.scales is not None:
            kept = at < len(told.scales) and told.scales[at] == 1.0
        elif told.sizes is not None:
            kept = at < len(told.sizes) and told.sizes[at] in batch
        else:
            kept = made is not None and axis < len(made) and made[axis] in batch
        roi = told.roi.reshape(-1).tolist() if told.roi is not None else None
        whole = roi is not None and len(roi) == 2 * len(listed) and (roi[at], roi[len(listed) + at]) == (0, 1)
        if not kept or (cropped and not whole):
            return f"{described(node)} may resize the batch's axis {axis}: its rows are not kept one for one"
    return None
