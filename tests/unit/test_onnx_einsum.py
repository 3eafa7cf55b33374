"""An Einsum's equation read for the rows of a batch (server/backends/onnx_einsum.py), function by
function: its letters per axis (`...` spread over the axes it stands for), the implicit output, the
axes summed or taken twice, and the letters that name the batch's axes."""

from __future__ import annotations

import pytest
from onnx import helper

from server.backends.onnx_einsum import einsum_axes, einsum_batch_letters, einsum_letters


def _einsum(equation: str | bytes, inputs: int = 2) -> object:
    return helper.make_node("Einsum", [f"x{i}" for i in range(inputs)], ["y"], equation=equation)


@pytest.mark.parametrize(
    ("equation", "ranks", "letters", "out"),
    [
        ("ij,jk->ik", [2, 2], [["i", "j"], ["j", "k"]], "ik"),
        (" i j , j k -> i k ", [2, 2], [["i", "j"], ["j", "k"]], "ik"),  # spaces are no letters
        ("...ij,jk->...ik", [4, 2], [[None, None, "i", "j"], ["j", "k"]], "...ik"),
        ("i...,j...->ij", [3, 1], [["i", None, None], ["j"]], "ij"),  # `...` at the end; none left
        ("ij,jk", [2, 2], [["i", "j"], ["j", "k"]], "ik"),  # implicit: the letters named once, sorted
        ("ba,ac", [2, 2], [["b", "a"], ["a", "c"]], "bc"),
        ("ij->ji", [2, 2], None, None),  # two inputs for one term: unread
    ],
)
def test_letters_per_axis_and_the_output(
    equation: str, ranks: list[int], letters: list[list[str | None]] | None, out: str | None
) -> None:
    read = einsum_letters(_einsum(equation, len(ranks)), ranks)  # type: ignore[arg-type]
    assert read == (None if letters is None else (letters, out))


def test_an_equation_stored_as_text_reads_alike() -> None:
    node = _einsum("ij,jk->ik")
    node.attribute[0].s = b"ij,jk->ik"
    assert einsum_letters(node, [2, 2]) == ([["i", "j"], ["j", "k"]], "ik")  # type: ignore[arg-type]


def test_a_missing_equation_reads_as_no_letters() -> None:
    node = helper.make_node("Einsum", ["x"], ["y"])
    assert einsum_letters(node, [0]) == ([[]], "")


@pytest.mark.parametrize(
    ("equation", "ranks", "axes"),
    [
        ("nk,kj->nj", [2, 2], [(0, [1]), (1, [0])]),  # k summed in both
        ("nk->k", [2], [(0, [0])]),
        ("nii->ni", [3], [(0, [1, 2])]),  # a diagonal: i twice in one input
        ("...k,kj->...j", [3, 2], [(0, [2]), (1, [0])]),  # the `...` axes kept
        ("nk,nk->n", [2, 2], [(0, [1]), (1, [1])]),
    ],
)
def test_the_axes_summed_or_taken_twice(
    equation: str, ranks: list[int], axes: list[tuple[int, list[int]]]
) -> None:
    assert einsum_axes(_einsum(equation, len(ranks)), ranks) == axes  # type: ignore[arg-type]


def test_an_unread_equation_mixes_along_every_axis() -> None:
    found = einsum_axes(_einsum("ij->j", 2), [2, 3])  # type: ignore[arg-type]
    assert [(i, list(r)) for i, r in found] == [(0, [0, 1]), (1, [0, 1, 2])]


@pytest.mark.parametrize(
    ("equation", "carried", "letters"),
    [
        ("nk,mk->nm", [[True, False], [True, False]], ["m", "n"]),  # x @ x^T: two letters
        ("nk,nk->n", [[True, False], [True, False]], ["n"]),
        ("nk,kj->nj", [[True, False], [False, False]], ["n"]),
        ("...k,kj->...j", [[True, False, False], [False, False]], []),  # the batch under `...`
        ("ij->ji", [[True, False], [False]], []),  # one term for two inputs: unread
    ],
)
def test_the_letters_naming_the_batch(equation: str, carried: list[list[bool]], letters: list[str]) -> None:
    assert einsum_batch_letters(_einsum(equation, len(carried)), carried) == letters  # type: ignore[arg-type]
