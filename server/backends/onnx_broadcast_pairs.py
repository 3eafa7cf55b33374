"""Elementwise ops whose inputs carry the batch on different axes once broadcast (x[:, None] -
x[None], a pairwise distance): each row is paired with every other (onnx_row_mixing.py asks). So
too the batch's axis broadcast against a fixed length above 1 (x [N, 2] + t [4, 1]): alone a
request's row is spread over 4 rows, batched four requests' rows pair with t's, and a reduction over
them mixes (a tester, session 58)."""

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
    fixed: bool = True,
) -> str | None:
    """Why the node pairs rows (None: it does not); `dims`: its inputs' dims; `where(input, axis)`:
    how a message names an input's axis; `fixed`: whether the batch broadcast against a fixed length
    is read too (an elementwise op's; a scale's is read with its op's axes)."""
    rank = max((len(d) for d in dims), default=0)
    seen: dict[int, set[int]] = {}  # the broadcast axis of the batch -> the inputs carrying it there
    for index, shape in enumerate(dims):
        for axis, dim in enumerate(shape):
            if dim in batch:
                seen.setdefault(rank - len(shape) + axis, set()).add(index)
    carriers = set().union(*seen.values()) if seen else set()
    if len(seen) < 2 or all(found == carriers for found in seen.values()):
        return _against_fixed(node, dims, seen, where) if fixed else None  # one axis, or alike on each
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


def _against_fixed(
    node: onnx.NodeProto,
    dims: Sequence[Sequence[Dim]],
    seen: dict[int, set[int]],
    where: Callable[[int, int], str],
) -> str | None:
    """Why the batch's axis broadcast against a fixed length above 1 mixes (None: it is not)."""
    rank = max((len(d) for d in dims), default=0)
    for at, carrying in sorted(seen.items()):  # a fixed length > 1 where the batch is: spread, or paired
        for index, shape in enumerate(dims):
            dim = shape[at - rank + len(shape)] if at - rank + len(shape) >= 0 else 1
            if index not in carrying and isinstance(dim, int) and dim > 1:
                i = min(carrying)
                return (
                    f"{described(node)} broadcasts {where(i, at - rank + len(dims[i]))} against a fixed "
                    f"length {dim} of {where(index, at - rank + len(shape))}: alone a request's row is "
                    f"spread over {dim} rows, batched its batch mates' rows pair with them"
                )
    return None
