"""What a Reshape (or Flatten) does to the rows of a batch, read from its input's and output's dims
as onnx's shape inference gives them (onnx_row_mixing.py asks).

A reshape keeps each request's rows its own when the batch's axis lands on an output axis with as
many values before it: [N, S, 768] -> [N, S, 12, 64] does, [3, N] -> [N, 3] (x.t().reshape(x.shape))
does not: each output row is made of values from three input rows, answered OK beside batch mates.
A reshape that folds the batch into one axis with its neighbours ([N, T, C] -> [N*T, C], torch's
view(-1, C) of a Linear, a window partition) keeps rows too, but the folded axis now carries them:
a Softmax along it mixes requests. The fold is remembered (the output axis's symbol and the dims it
is made of) so that ops along it are read as along the batch, and a later reshape is read with the
folded axis spelled out ([T*N, C] -> [T, N, C] unfolds a time-major fold and keeps rows).

Dims are ints, symbols (str) or None (unknown): a product with an unknown dim is not compared, and
a reshape whose dims cannot be matched is not flagged (no proof).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

Dim = int | str | None
Folds = Mapping[str, Sequence[Dim]]  # an output axis's symbol -> the input dims folded into it
MAX_DEPTH = 8  # folds of folds spelled out at most this deep (a graph's folds cannot cycle)


@dataclass(frozen=True)
class Moved:
    """The batch's axis `source` (of the input, folds spelled out) lands at output axis `target`
    (folds spelled out) with a different count of values before it."""

    source: int
    target: int


@dataclass(frozen=True)
class Folded:
    """The batch is folded into output axis `axis` (its symbol `symbol`) with `dims` around it."""

    axis: int
    symbol: str
    dims: tuple[Dim, ...]


def spelled_out(dims: Sequence[Dim], folds: Folds, depth: int = 0) -> list[Dim]:
    """`dims` with each folded axis replaced by the dims it was made of."""
    out: list[Dim] = []
    for dim in dims:
        if isinstance(dim, str) and dim in folds and depth < MAX_DEPTH:
            out.extend(spelled_out(folds[dim], folds, depth + 1))
        else:
            out.append(dim)
    return out


def reshaped_rows(
    before: Sequence[Dim], after: Sequence[Dim], batch: Collection[str], folds: Folds
) -> Moved | Folded | None:
    """What the reshape of `before` into `after` does to the batch's rows: moves them (Moved), folds
    them into one axis (Folded), or keeps them or cannot be told (None)."""
    source_dims = spelled_out(before, folds)
    source = _first_batch(source_dims, batch)
    if source is None:
        return None
    target_dims = spelled_out(after, folds)
    target = _first_batch(target_dims, batch)
    if target is not None:
        ahead, behind = _product(source_dims[:source]), _product(target_dims[:target])
        # Moved only where the counts differ whatever the symbols are: the same symbols times
        # different numbers. ['seq', N, 12] -> [5, N, 12] is an exporter's fixed length, no proof.
        if ahead is None or behind is None or ahead[1] != behind[1] or ahead[0] == behind[0]:
            return None
        return Moved(source, target)
    return _fold(source_dims, list(after), source)


def values_per_row(dim: Dim, batch: Collection[str], folds: Folds) -> int | None:
    """How many values of an axis each row of the batch has there: 1 on the batch's own axis, the
    product of the dims after it where the batch leads a fold ([N, 768, 1, 1] folded: 768); None
    where the batch does not lead, or the rest is not a fixed number."""
    spelled = spelled_out([dim], folds)
    row = _first_batch(spelled, batch)
    if row is None or _product(spelled[:row]) != (1, ()):
        return None
    rest = _product(spelled[row + 1 :])
    return rest[0] if rest is not None and not rest[1] else None


def _first_batch(dims: Sequence[Dim], batch: Collection[str]) -> int | None:
    return next((axis for axis, dim in enumerate(dims) if isinstance(dim, str) and dim in batch), None)


def _product(dims: Sequence[Dim]) -> tuple[int, tuple[tuple[str, int], ...]] | None:
    """A product of dims as its whole number times its symbols (None: a dim is unknown)."""
    number, symbols = 1, Counter[str]()
    for dim in dims:
        if dim is None:
            return None
        if isinstance(dim, int):
            number *= dim
        else:
            symbols[dim] += 1
    return number, tuple(sorted(symbols.items()))


def _fold(source: list[Dim], target: list[Dim], batch_axis: int) -> Folded | None:
    """The one output axis the batch's axis went into: the dims both sides share are matched from
    the front and from the back; the input's rest, the batch's axis among them, must make one
    output axis, a symbol."""
    shared = min(len(source), len(target))
    front = 0
    while front < shared and source[front] is not None and source[front] == target[front]:
        front += 1
    back = 0
    while back < shared - front and source[-1 - back] is not None and source[-1 - back] == target[-1 - back]:
        back += 1
    # Unit axes in the rest make no difference ([N, C] -> [1, N*C] folds the batch into axis 1).
    middle = [
        (axis, dim) for axis, dim in enumerate(target[: len(target) - back]) if axis >= front and dim != 1
    ]
    if not front <= batch_axis < len(source) - back or len(middle) != 1:
        return None
    axis, symbol = middle[0]
    if not isinstance(symbol, str) or symbol in source:  # a symbol of its own: a fold, not a size
        return None
    return Folded(axis, symbol, tuple(source[front : len(source) - back]))
