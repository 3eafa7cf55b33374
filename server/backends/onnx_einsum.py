"""An Einsum's equation read for the rows of a batch (onnx_mixing_ops.py, onnx_row_mixing.py): the
axes it sums over or takes a diagonal along, and the letters it names the batch's axes by. Two
letters for the batch pair every row with every other (`nk,mk->nm` of x and x: x @ x^T)."""

from __future__ import annotations

from collections.abc import Sequence

import onnx

from server.backends.graph_names import attribute as attr

Axes = list[tuple[int, Sequence[int]]]  # (input index, the axes of that input the op mixes along)


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
