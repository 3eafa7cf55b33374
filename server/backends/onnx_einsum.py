"""An Einsum's equation read for the rows of a batch (onnx_mixing_ops.py, onnx_row_mixing.py): the
axes it sums over or takes a diagonal along, and the letters it names the batch's axes by. Two
letters for the batch pair every row with every other (`nk,mk->nm` of x and x: x @ x^T)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import onnx

from server.backends.graph_names import attribute as attr
from server.backends.graph_names import described
from server.backends.onnx_broadcast_pairs import Dim, broadcast_pair

Axes = list[tuple[int, Sequence[int]]]  # (input index, the axes of that input the op mixes along)
PAIRED = "its equation names the batch's axes by the letters"


def einsum_letters(node: onnx.NodeProto, ranks: Sequence[int]) -> tuple[list[list[str | None]], str] | None:
    """Each input's axes as its equation's letters (None: an axis of its `...`), and the output's
    letters; None where the equation cannot be read."""
    equation = attr(node, "equation", b"")
    text = (equation.decode() if isinstance(equation, bytes) else str(equation)).replace(" ", "")
    given, arrow, out = text.partition("->")
    terms = given.split(",")
    if len(terms) != len(ranks):
        return None
    letters: list[list[str | None]] = []
    for term, rank in zip(terms, ranks, strict=True):
        head, dots, tail = term.partition("...")
        spread = max(0, rank - len(head) - len(tail)) if dots else 0
        letters.append([*head, *([None] * spread), *tail])
    if not arrow:  # implicit: the letters named once, in order
        out = "".join(sorted(c for c in set(given) if c.isalpha() and given.count(c) == 1))
    return letters, out


def einsum_axes(node: onnx.NodeProto, ranks: Sequence[int]) -> Axes:
    """An Einsum's summed axes (a letter not in its output) and diagonals (a letter twice in one
    input); where its equation cannot be read, every axis."""
    read = einsum_letters(node, ranks)
    if read is None:
        return [(i, range(r)) for i, r in enumerate(ranks)]
    letters, out = read
    return [
        (i, [a for a, c in enumerate(axes) if c is not None and (c not in out or axes.count(c) > 1)])
        for i, axes in enumerate(letters)
    ]


def einsum_batch_letters(node: onnx.NodeProto, carried: Sequence[Sequence[bool]]) -> list[str]:
    """The letters an Einsum's equation names the batch's axes by (`carried`: per input, whether
    each of its axes carries the batch): two pair rows (`ni,nj->nij` of x and x^T's axes)."""
    read = einsum_letters(node, [len(axes) for axes in carried])
    if read is None:
        return []
    axes_letters = zip(read[0], carried, strict=True)
    return sorted(
        {c for axes, kept in axes_letters for c, batch in zip(axes, kept, strict=False) if c and batch}
    )


def einsum_mixing(
    node: onnx.NodeProto,
    dims: Sequence[Sequence[Dim]],
    batch: Collection[str],
    where: Callable[[int, int], str],
    free: Sequence[bool],
) -> str | None:
    """Why an Einsum mixes rows beyond the axes it sums (None: it does not): two letters for the
    batch (`nk,mk->nm` of x and x), or the batch in an input's `...` broadcast against another's
    (`...ij,...jk` of x [N, 1, 2] and W [4, 2, 2]: each request's row spread over W's 4, batched
    paired with them; a tester, session 58), read as an elementwise op's broadcast."""
    carried = [[dim in batch for dim in shape] for shape in dims]
    if len(letters := einsum_batch_letters(node, carried)) > 1:
        return f"{described(node)} pairs each row of the batch with every other: {PAIRED} {letters}"
    read = einsum_letters(node, [len(shape) for shape in dims])
    if read is None or not any(None in axes for axes in read[0]):
        return None
    parts = [
        [d for d, c in zip(shape, axes, strict=False) if c is None]
        for shape, axes in zip(dims, read[0], strict=True)
    ]
    offsets = [axes.index(None) if None in axes else 0 for axes in read[0]]
    return broadcast_pair(node, parts, batch, lambda i, a: where(i, a + offsets[i]), free)
