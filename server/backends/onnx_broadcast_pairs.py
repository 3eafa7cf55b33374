"""Elementwise ops whose inputs carry the batch on different axes once broadcast (x[:, None] -
x[None], a pairwise distance): each row is paired with every other (onnx_row_mixing.py asks)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import onnx

from server.backends.graph_names import described

Dim = int | str | None


def broadcast_pair(
    node: onnx.NodeProto,
    dims: Sequence[Sequence[Dim]],
    batch: Collection[str],
    where: Callable[[int, int], str],
) -> str | None:
    """Why the node pairs rows (None: it does not); `dims`: its inputs' dims; `where(input, axis)`:
    how a message names an input's axis."""
    rank = max((len(d) for d in dims), default=0)
    seen: dict[int, set[int]] = {}  # the broadcast axis of the batch -> the inputs carrying it there
    for index, shape in enumerate(dims):
        for axis, dim in enumerate(shape):
            if dim in batch:
                seen.setdefault(rank - len(shape) + axis, set()).add(index)
    carriers = set().union(*seen.values()) if seen else set()
    if len(seen) < 2 or all(found == carriers for found in seen.values()):
        return None  # one axis, or inputs alike on each (zeros(N, N) + zeros(N, N))
    # An input carrying the batch where another does not: zeros(N, N) + x[:, :1]^T put every
    # row's value in each row (a tester, session 52), as x[:, None] - x[None] does.
    (a, i), (b, j) = next(
        ((a, min(at)), (b, min(bt - at)))
        for a, at in sorted(seen.items())
        for b, bt in sorted(seen.items())
        if bt - at
    )
    return (
        f"{described(node)} pairs each row of the batch with every other: it broadcasts "
        f"{where(i, a - rank + len(dims[i]))} against {where(j, b - rank + len(dims[j]))}, "
        "both the batch's axis"
    )
