"""What a Reshape (or Flatten) does to the rows of a batch, read from its input's and output's dims
as onnx's shape inference gives them (onnx_row_mixing.py asks).

A reshape keeps each request's rows its own when the batch's axis lands on an output axis with as
many values before it: [N, S, 768] -> [N, S, 12, 64] does, [3, N] -> [N, 3] (x.t().reshape(x.shape))
does not: each output row is made of values from three input rows, answered OK beside batch mates.
A reshape that folds the batch into one axis with its neighbours ([N, T, C] -> [N*T, C], torch's
view(-1, C) of a Linear, a window partition) keeps rows too, but the folded axis now carries them:
a Softmax along it mixes requests. The fold is remembered (the output axis's symbol and the dims it
is made of) so that ops along it are read as along the batch, and a later reshape is read with the
folded axis spelled out ([T*N, C] -> [T, N, C] unfolds a time-major fold and keeps rows). A
reshape that spreads the batch over several output axes, none of them its own ([N, 4] -> [2, 2N]),
puts parts of different requests' rows on one axis: read as moving rows.

The output's one dim onnx could not name (a -1) is worked out from the others: [4, N] -> [?, 4]
makes ? = N, so x.t().view(-1, 4) moves rows. Dims are ints, symbols (str) or None (unknown): a
product with an unknown dim is not compared, and a reshape whose dims cannot be matched is not
flagged (no proof).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

Dim = int | str | None
Folds = Mapping[str, Sequence[Dim]]  # an output axis's symbol -> the input dims folded into it
Product = tuple[int, tuple[tuple[str, int], ...]]  # a whole number times symbols, each to a power
STRADDLES = "straddles"  # the output's pieces cut across rows
UNNAMED = "?"  # an output dim onnx gave no name: not a symbol any tensor carries
MAX_DEPTH = 8  # folds of folds spelled out at most this deep (a graph's folds cannot cycle)
Relation = tuple[Product, Product]  # two products of dims equal in any run that succeeds


@dataclass(frozen=True)
class Moved:
    """The batch's axis `source` (of the input, folds spelled out) lands at output axis `target`
    (folds spelled out; None: spread over several output axes, none its own) with a different
    count of values ahead of it, `ahead` before and `behind` after."""

    source: int
    target: int | None
    ahead: str
    behind: str


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


def values_per_row(dim: Dim, batch: Collection[str], folds: Folds) -> Dim:
    """How many values of an axis each row of the batch has there: 1 on the batch's own axis, the
    product of the dims after it where the batch leads a fold ([N, 768, 1, 1] folded: 768; [N, T]:
    T); None where the batch does not lead, or the rest is not one number or one dim."""
    spelled = spelled_out([dim], folds)
    row = _first_batch(spelled, batch)
    if row is None or dims_product(spelled[:row]) != (1, ()):
        return None
    rest = dims_product(spelled[row + 1 :])
    if rest is None or not rest[1]:
        return rest[0] if rest is not None else None
    return rest[1][0][0] if rest[0] == 1 and rest[1] == ((rest[1][0][0], 1),) else None


def reshaped_rows(
    before: Sequence[Dim],
    after: Sequence[Dim],
    batch: Collection[str],
    folds: Folds,
    relations: Sequence[Relation] = (),
) -> Moved | Folded | None:
    """What the reshape of `before` into `after` does to the batch's rows: moves them (Moved), folds
    them into one axis (Folded), or keeps them or cannot be told (None)."""
    source = spelled_out(before, folds)
    row = _first_batch(source, batch)
    if row is None:
        return None
    spelled = spelled_out(after, folds)
    solved = _solved(source, spelled, batch, relations)
    if solved is None:
        # Not worked out (a -1 of S / 2): the batch's axis with other counts ahead of it still moves
        # rows ([S, N, 6] -> [2, N, 6, -1]; a tester, session 57).
        column = _first_batch(spelled, batch)
        if column is None and None in source:  # the batch folded with a length no one knows: no proof
            return Moved(row, None, str(source[:row]), str(list(after)))  # ([N, ?] -> [-1, 1]; s58)
        ahead = dims_product(source[:row])
        behind = dims_product(spelled[:column]) if column is not None else None
        if column is None or ahead is None or behind is None or ahead == behind:
            return None
        return Moved(row, column, str(source[:row]), str(spelled[:column]))
    if isinstance(solved, str):
        return Moved(row, None, str(source[:row]), str(list(after)))
    target, sizes = solved
    column = _first_batch(target, batch)
    if column is not None:
        ahead, behind = dims_product(source[:row]), dims_product(target[:column], sizes)
        # Moved only where the counts differ whatever the symbols are: the same symbols times
        # different numbers, or symbols on one side and nothing on the other (a seq-first [T, N, H]
        # viewed as [N, -1]: rows move unless T is 1; a tester, session 52). ['seq', N, 12] ->
        # [5, N, 12] is an exporter's fixed length, no proof: an output of numbers only runs for that
        # length alone. One with a symbol or a -1 runs for any ([S, N, 6] -> [2, N, 3S] or
        # [2, N, 3, S]), moving rows unless S is 2 (testers, session 57).
        if ahead is None or behind is None or ahead == behind:
            return None
        fixed = not sizes and all(isinstance(dim, int) or dim in batch for dim in target)
        if ahead[1] != behind[1] and (1, ()) not in (ahead, behind) and fixed:
            return None
        return Moved(row, column, str(source[:row]), str(target[:column]))
    return _regrouped(source, target, sizes, row, batch)


def places_batch(
    before: Sequence[Dim],
    after: Sequence[Dim] | None,
    batch: Collection[str],
    folds: Folds,
    relations: Sequence[Relation] = (),
) -> bool:
    """Whether a reshape the reading above found keeping rows is known to leave the batch on an
    output axis: one its name, or the one dim the input does not name worked out as its size.
    Neither (the shape's entries not known at load; no rank at all) and the rows may go anywhere:
    x [N, 4, 3] viewed as [-1, k] folds them for k = 3 and pairs them for k = 24 (a tester, s65).
    True where the input has no batch: there is nothing to place."""
    source = spelled_out(before, folds)
    if _first_batch(source, batch) is None:
        return True
    if after is None:
        return False
    spelled = spelled_out(after, folds)
    if _first_batch(spelled, batch) is not None:
        return True
    solved = _solved(source, spelled, batch, relations)
    return isinstance(solved, tuple) and _first_batch(solved[0], batch) is not None


def solved_batch_axis(
    before: Sequence[Dim],
    after: Sequence[Dim],
    batch: Collection[str],
    folds: Folds,
    relations: Sequence[Relation] = (),
) -> int | None:
    """The output axis of a reshape that carries the batch by no name of the batch's, its size
    worked out as the batch's (a -1 onnx named anew): the ops after it read it as the batch's."""
    source, spelled = spelled_out(before, folds), spelled_out(after, folds)
    if _first_batch(source, batch) is None or _first_batch(spelled, batch) is not None:
        return None
    solved = _solved(source, spelled, batch, relations)
    if not isinstance(solved, tuple) or len(solved[0]) != len(after):
        return None
    axis = _first_batch(solved[0], batch)
    return axis if axis is not None and isinstance(after[axis], str) else None


def _first_batch(dims: Sequence[Dim], batch: Collection[str]) -> int | None:
    return next((axis for axis, dim in enumerate(dims) if isinstance(dim, str) and dim in batch), None)


def dims_product(dims: Sequence[Dim], sizes: Mapping[str, Product] | None = None) -> Product | None:
    """A product of dims as its whole number times its symbols (None: a dim is unknown); `sizes`:
    symbols whose size is known as a product of others."""
    number, symbols = 1, Counter[str]()
    for dim in dims:
        if dim is None:
            return None
        if isinstance(dim, int):
            number *= dim
        elif sizes is not None and dim in sizes:
            number *= sizes[dim][0]
            symbols.update(dict(sizes[dim][1]))
        else:
            symbols[dim] += 1
    return number, tuple(sorted(symbols.items()))


def _solved(
    source: list[Dim], target: list[Dim], batch: Collection[str], relations: Sequence[Relation] = ()
) -> tuple[list[Dim], dict[str, Product]] | str | None:
    """`target` with its one dim the input does not name worked out from the others: written as
    the batch's symbol where it is the batch's size, else kept with its size (`UNNAMED` where onnx
    gave it no name). STRADDLES where pieces of the output hold parts of two rows; None where two
    are unknown, or the sizes do not divide."""
    unknown = [
        axis for axis, dim in enumerate(target) if dim is None or (isinstance(dim, str) and dim not in source)
    ]
    if not unknown:
        return target, {}
    whole = dims_product(source)
    if len(unknown) > 1 and whole is not None and relations:
        return _batch_by_relations(whole, target, unknown, batch, relations)
    rest = dims_product([dim for axis, dim in enumerate(target) if axis not in unknown])
    if len(unknown) > 1 or whole is None or rest is None:
        return None
    dims = dims_quotient(whole, rest)
    dims = dims if dims is not None else related_quotient(whole, rest, relations)
    size = dims_product(dims) if dims is not None else None
    if size is None:
        # Rows of a fixed size cut in pieces of a size that does not divide them ([N, 6] -> [?, 4]):
        # some pieces hold two requests' values, for any batch.
        only_batch = all(symbol in batch for symbol, _ in whole[1]) and not rest[1]
        return STRADDLES if only_batch and rest[0] and whole[0] % rest[0] else None
    solved = list(target)
    if size[0] == 1 and len(size[1]) == 1 and size[1][0][1] == 1 and size[1][0][0] in batch:
        solved[unknown[0]] = size[1][0][0]
        return solved, {}
    name = solved[unknown[0]] if isinstance(solved[unknown[0]], str) else UNNAMED
    solved[unknown[0]] = name
    return solved, {str(name): size}


def _regrouped(
    source: list[Dim], target: list[Dim], sizes: Mapping[str, Product], row: int, batch: Collection[str]
) -> Moved | Folded | None:
    """Where the batch goes when the output does not carry it: the dims of input and output are
    matched in groups of equal products; the output dims of the batch's group must be one axis (a
    fold), else the batch is spread over several."""
    before = [dims_product(source[:end]) for end in range(len(source) + 1)]
    after = [dims_product(target[:end], sizes) for end in range(len(target) + 1)]
    matched = [(a, b) for a, p in enumerate(before) for b, q in enumerate(after) if p is not None and p == q]
    starts = [pair for pair in matched if pair[0] <= row]
    ends = [pair for pair in matched if pair[0] > row]
    if not starts or not ends:
        return None
    first, begin = max(starts)
    last, end = min(ends)
    axes = [axis for axis in range(begin, end) if target[axis] != 1]
    if not axes:
        return None
    # The group's first output axis holds whole rows' blocks where each row's values after the
    # batch are a whole number of that axis's steps ([N, 8, 7, 8] -> [64N, 7]: a window partition).
    inner = dims_product(target[axes[0] + 1 : end], sizes)
    block = dims_product(source[row + 1 : last])
    steps = dims_quotient(block, inner) if block is not None and inner is not None else None
    lead = target[axes[0]]
    if steps is None and isinstance(lead, str) and lead not in batch and lead in source[row + 1 :]:
        # The group's first output axis is a dim that follows the batch in the input ([N, S, 6] as
        # (S, -1)): its rows are cut from several requests' (a tester, session 57).
        return Moved(row, None, str(source[first:row]), str([target[axis] for axis in axes]))
    if steps is None:
        unknown = (
            [symbol for symbol, _ in (*block[1], *inner[1]) if symbol not in batch]
            if block and inner
            else [0]
        )
        if unknown:
            return None  # a size not known (a head's width onnx lost): no proof
        return Moved(row, None, str(source[first:row]), str([target[axis] for axis in axes]))
    symbol = target[axes[0]]
    if not isinstance(symbol, str) or symbol == UNNAMED or symbol in source:
        return None  # a fold has a symbol of its own to be followed by
    return Folded(axes[0], symbol, (*source[first : row + 1], *steps))


def dims_quotient(whole: Product, part: Product) -> list[Dim] | None:
    """`whole` / `part` as dims, where it is a whole number times symbols of `whole`."""
    if part[0] == 0 or whole[0] % part[0]:
        return None
    left = Counter(dict(whole[1]))
    left.subtract(Counter(dict(part[1])))
    if any(power < 0 for power in left.values()):
        return None
    return [whole[0] // part[0], *(symbol for symbol, power in sorted(left.items()) for _ in range(power))]


def _batch_by_relations(
    whole: Product,
    target: list[Dim],
    unknown: list[int],
    batch: Collection[str],
    relations: Sequence[Relation],
) -> tuple[list[Dim], dict[str, Product]] | None:
    """`target` with the one of its dims its input does not name that relations prove the batch's
    size (window_reverse's [-1, Hp, Wp, C] of [N, hq, 4, wq, 4, C], Hp * Wp = 16 * hq * wq); None
    where none is."""
    for axis in unknown:
        rest = dims_product([dim for at, dim in enumerate(target) if at != axis])
        found = related_quotient(whole, rest, relations) if rest is not None else None
        if found is not None and found[0] == 1 and len(found) == 2 and found[1] in batch:
            return [found[1] if at == axis else dim for at, dim in enumerate(target)], {}
    return None


def relation(source: Sequence[Dim], target: Sequence[Dim]) -> Relation | None:
    """What a reshape of `source` into `target` proves (both keep as many values): their products
    with the dims and numbers they share taken out ([N, Hp, Wp, C] -> [N, hq, 4, wq, 4, C]: Hp * Wp
    = 16 * hq * wq, a Swin's window partition); None where a dim is unknown, or nothing is left."""
    first, second = dims_product(source), dims_product(target)
    if first is None or second is None or 0 in (first[0], second[0]):
        return None
    left, right = Counter(dict(first[1])), Counter(dict(second[1]))
    shared = left & right
    left.subtract(shared)
    right.subtract(shared)
    common = math.gcd(first[0], second[0])
    found = (
        (first[0] // common, tuple(sorted((+left).items()))),
        (second[0] // common, tuple(sorted((+right).items()))),
    )
    return found if found[0] != found[1] and (found[0][1] or found[1][1]) else None


def related_quotient(whole: Product, part: Product, relations: Sequence[Relation]) -> list[Dim] | None:
    """`whole` / `part` with one relation's side in `part` written as its other side ([N, hq, 4, wq,
    4, C] viewed as [-1, Hp, Wp, C] after the partition above: -1 is N)."""
    for pair in relations:
        for side, other in (pair, pair[::-1]):
            written = _rewritten(part, side, other)
            found = dims_quotient(whole, written) if written is not None else None
            if found is not None:
                return found
    return None


def _rewritten(product: Product, side: Product, other: Product) -> Product | None:
    """`product` with `side` (a factor of it) replaced by `other`."""
    left = Counter(dict(product[1]))
    left.subtract(Counter(dict(side[1])))
    if any(power < 0 for power in left.values()) or side[0] == 0 or product[0] % side[0]:
        return None
    left.update(dict(other[1]))
    return product[0] // side[0] * other[0], tuple(sorted((+left).items()))
