"""Elementwise ops whose inputs carry the batch on different axes once broadcast (x[:, None] -
x[None], a pairwise distance): each row is paired with every other (onnx_row_mixing.py asks). So
too the batch's axis broadcast against a fixed length above 1 (x [N, 2] + t [4, 1]): alone a
request's row is spread over 4 rows, batched four requests' rows pair with t's, and a reduction over
them mixes (a tester, session 58)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import onnx

from server.backends.graph_names import described, int_attribute

Dim = int | str | None


def broadcast_pair(
    node: onnx.NodeProto,
    dims: Sequence[Sequence[Dim]],
    batch: Collection[str],
    where: Callable[[int, int], str],
    free: Sequence[bool] | None = (),
    ranged: Collection[str] = (),
) -> str | None:
    """Why the node pairs rows (None: it does not); `dims`: its inputs' dims; `where(input, axis)`:
    how a message names an input's axis; `free`: None, or for each input whether it is made from no
    batched input (a length of another axis than the batch's counted as none: onnx_value_lineage.py):
    the batch broadcast against a fixed length of any input, against a length the load cannot tell
    of a free one, or against a Range's length (`ranged`, of any input) is read too (an elementwise
    op's; a scale's is read with its op's axes)."""
    rank = max((len(d) for d in dims), default=0)
    seen: dict[int, set[int]] = {}  # the broadcast axis of the batch -> the inputs carrying it there
    for index, shape in enumerate(dims):
        for axis, dim in enumerate(shape):
            if dim in batch:
                seen.setdefault(rank - len(shape) + axis, set()).add(index)
    carriers = set().union(*seen.values()) if seen else set()
    if len(seen) < 2 or all(found == carriers for found in seen.values()):
        return None if free is None else _against_fixed(node, dims, seen, where, free, ranged)  # one, alike
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
    free: Sequence[bool],
    ranged: Collection[str],
) -> str | None:
    """Why the batch's axis broadcast against a fixed length above 1 mixes, or against one the load
    cannot tell of an input made from no batched input (a constant cut by a computed length, a
    NonZero of a constant mask: its length 4 read as the batch's had batched, wrong, OK; a tester,
    session 58). Only of such an input: one made from the batch may carry it under a name onnx made
    up (a Resize's, a computed Pad's, a Reshape's -1 before a Conv: reading any input's refused an
    FPN's merge and eight other row-wise forms; a tester, session 60). None: it does not."""
    rank = max((len(d) for d in dims), default=0)
    for at, carrying in sorted(seen.items()):  # a fixed length > 1 where the batch is: spread, or paired
        for index, shape in enumerate(dims):
            dim = shape[at - rank + len(shape)] if at - rank + len(shape) >= 0 else 1
            fixed = isinstance(dim, int) and dim > 1
            of_free = index < len(free) and free[index]
            untold = (of_free or dim in ranged) and not isinstance(dim, int)
            if index not in carrying and (fixed or untold):
                length = f"fixed length {dim}" if fixed else "length the load cannot tell"
                i, length = min(carrying), length if fixed or of_free else f"Range's {length}"
                return (
                    f"{described(node)} broadcasts {where(i, at - rank + len(dims[i]))} against a {length} "
                    f"of {where(index, at - rank + len(shape))}: alone a request's row is spread over "
                    "its rows, batched its batch mates' rows pair with them"
                )
    return None


def scale_pair(
    node: onnx.NodeProto,
    dims: Sequence[Sequence[Dim]],
    batch: Collection[str],
    where: Callable[[int, int], str],
    free: Sequence[bool],
    ranged: Collection[str] = (),
) -> str | None:
    """A scale's or a bias's pairing of rows (LayerNormalization's): a pair of batch axes only, its
    broadcast against fixed lengths read with the op's own axes."""
    return broadcast_pair(node, dims, batch, where, None)


def concat_pinned(
    node: onnx.NodeProto,
    dims: Sequence[Sequence[Dim]],
    batch: Collection[str],
    where: Callable[[int, int], str],
    free: Sequence[bool],
    ranged: Collection[str] = (),
) -> str | None:
    """Why a Concat joins the batch's axis, off its own axis, to another input's fixed length or one
    the load cannot tell of an input made from no batched input (None: it does not): its inputs must
    agree there, so a run of more requests than that length fails (a [1, k] constant beside x
    [N, 2]: each request alone answered, batched every one INTERNAL; a tester, session 58; so too
    Concat(c, x) with c a [1, 2] constant a Loop returns, its shape unknown: the rank had been read
    from the first input, none, and nothing checked; a tester, session 58)."""
    if node.op_type != "Concat" or not dims:
        return None
    rank = max(len(shape) for shape in dims)  # the first input's shape may be unknown (a Loop's output)
    axis = int_attribute(node, "axis", 0) % max(rank, 1)
    for at in (a for a in range(rank) if a != axis):
        carrying = [i for i, shape in enumerate(dims) if len(shape) == rank and shape[at] in batch]
        for index, shape in enumerate(dims):
            untold = index < len(free) and free[index]  # of no batched input: its length, unknown too
            if not carrying or index in carrying or (len(shape) != rank and not (untold and not shape)):
                continue
            dim = shape[at] if shape else None  # no dims: a Concat's inputs have some, unknown here
            if isinstance(dim, int) or untold or dim in ranged:
                other = where(index, at) if shape else f"'{node.input[index]}' (its shape unknown)"
                return (
                    f"{described(node)} joins {where(carrying[0], at)} to {other}, which is not the "
                    "batch's: they must agree, and a batch of more requests than it fails"
                )
    return None
