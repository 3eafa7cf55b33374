"""Ops that may add rows to the batch's axis or copy the batch along another: a Pad or a Tile whose
amounts the graph computes, an Expand that puts the batch on a second axis (onnx_row_mixing.py
asks). A tester of session 51: pads [x.shape[1] // 4, 0, 0, 0] gave each request the row before
it, x.repeat(k, 1) with k read from the shape gave rows of other requests, and
x.unsqueeze(0).expand(N, N, 4) gave every request the whole batch, all OK.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import onnx

from server.backends.graph_names import described
from server.backends.onnx_partial_ints import Entries

Dims = Sequence[int | str | None]
COMPUTED = "computed at run time: the load cannot tell it adds no rows"


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
    node: onnx.NodeProto, given: Dims | None, made: Dims | None, batch: Collection[str]
) -> str | None:
    """Why an Expand pairs rows: its output carries the batch on an axis where its input had one
    value (or none), while the input carries the batch on another."""
    if given is None or made is None or len(given) > len(made):
        return None
    ahead = len(made) - len(given)
    own = [ahead + axis for axis, dim in enumerate(given) if isinstance(dim, str) and dim in batch]
    if not own:
        return None
    for axis, dim in enumerate(made):
        widened = axis < ahead or given[axis - ahead] == 1
        if widened and isinstance(dim, str) and dim in batch:
            return (
                f"{described(node)} copies the whole batch along axis {axis} of its output {list(made)}: "
                f"its input carries the batch's rows on axis {own[0]}"
            )
    return None
