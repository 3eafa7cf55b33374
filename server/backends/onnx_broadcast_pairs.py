"""Elementwise ops whose inputs carry the batch on different axes once broadcast (x[:, None] -
x[None], a pairwise distance): each row is paired with every other (onnx_row_mixing.py asks). So
too the batch's axis broadcast against a fixed length above 1 (x [N, 2] + t [4, 1]): alone a
request's row is spread over 4 rows, batched four requests' rows pair with t's, and a reduction over
them mixes (a tester, session 58), or against a length the load cannot tell (a table of positions
as long as x's columns: session 61)."""

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
    free: Sequence[bool | None] | None = (),
) -> str | None:
    """Why the node pairs rows (None: it does not); `dims`: its inputs' dims; `where(input, axis)`:
    how a message names an input's axis; `free`: None where the batch's axis broadcast against
    another input's length is not read (a scale's is read with its op's axes), else for each input
    whether its lengths are read (not where it mixes already: its reason is the better one; None:
    its shape is not known, read as any length)."""
    rank = max((len(d) for d in dims), default=0)
    seen: dict[int, set[int]] = {}  # the broadcast axis of the batch -> the inputs carrying it there
    for index, shape in enumerate(dims):
        for axis, dim in enumerate(shape):
            if dim in batch:
                seen.setdefault(rank - len(shape) + axis, set()).add(index)
    carriers = set().union(*seen.values()) if seen else set()
    if len(seen) < 2 or all(found == carriers for found in seen.values()):
        return None if free is None else _against_other(node, dims, seen, where, free)  # one, alike
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


def _against_other(
    node: onnx.NodeProto,
    dims: Sequence[Sequence[Dim]],
    seen: dict[int, set[int]],
    where: Callable[[int, int], str],
    read: Sequence[bool | None],
) -> str | None:
    """Why the batch's axis broadcast against another input's fixed length above 1 mixes, or against
    one the load cannot tell: a constant cut by a computed length, a NonZero of a constant mask (a
    tester, session 58), a table of positions 0..L-1 as long as x's columns read off a CenterCropPad,
    an STFT's frames, a Squeeze at computed axes (by a Range, a Loop's turns, a CumSum of ones, a
    constant cut to L, a Tile, a TopK, ...: 39 forms, a tester, session 61): batched, request i was
    given the table's row i, alone its row 0, OK. Such a length had been read only of an input made
    from no batched input, since reading any input's refused an FPN's merge and eight other row-wise
    forms whose batch onnx renamed (`unk__`: a Resize's, an Upsample's, a computed Pad's, a Reshape's
    -1, a bmm's; a tester, session 60): the walk now takes a name onnx made up for an axis it
    refines as the batch's for the batch's wherever it is kept (onnx_batch_names.py), and works out
    a Reshape's -1 (onnx_dim_products.py). None: it does not."""
    rank = max((len(d) for d in dims), default=0)
    unknown = [index for index, reads in enumerate(read) if reads is None]  # of no known shape, not mixed
    if unknown and seen:  # a table given an axis at a computed place (a tester, session 61): as above
        at, carrying = min(seen.items())
        i = min(carrying)
        return (
            f"{described(node)} broadcasts {where(i, at - rank + len(dims[i]))} against "
            f"'{node.input[unknown[0]]}', whose shape the load cannot tell: alone a request's row may be "
            "spread over its rows, batched its batch mates' rows paired with them"
        )
    for at, carrying in sorted(seen.items()):  # a length other than 1 where the batch is: spread, or paired
        for index, shape in enumerate(dims):
            dim = shape[at - rank + len(shape)] if at - rank + len(shape) >= 0 else 1
            unread = index < len(read) and not read[index]
            if index not in carrying and not unread and (not isinstance(dim, int) or dim > 1):
                i, length = (
                    min(carrying),
                    f"fixed length {dim}" if isinstance(dim, int) else "length the load cannot tell",
                )
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
            if isinstance(dim, int) or untold:
                other = where(index, at) if shape else f"'{node.input[index]}' (its shape unknown)"
                return (
                    f"{described(node)} joins {where(carrying[0], at)} to {other}, which is not the "
                    "batch's: they must agree, and a batch of more requests than it fails"
                )
    return None


def matmul_pair(
    node: onnx.NodeProto,
    dims: Sequence[Sequence[Dim]],
    batch: Collection[str],
    where: Callable[[int, int], str],
    free: Sequence[bool],
) -> str | None:
    """A MatMul's axes before its last two (its stacks of matrices) broadcast as an elementwise op's:
    x[:, None] [N, 1, T] times a stack of L matrices spread each request's row over them (a tester,
    session 61: batched, wrong, OK once the batch's name was carried through a MatMul)."""
    if node.op_type != "MatMul" or len(dims) != 2:
        return None
    return broadcast_pair(node, [shape[:-2] for shape in dims], batch, where, free)
