"""Arithmetic on entries known in part (onnx_partial_ints.py follows a graph's small integer
tensors with it): numbers, dims' names and Made (computed from names), entry by entry.

A float tensor's entries are followed as ints while they are whole: a Cast of a dim to float and
back keeps it, a Div of floats is followed only where it is exact (7.0 / 2.0 is 3.5, not ONNX's
integer 3), a Mod of floats not at all, and a float constant is taken only where every entry is
whole and exact as a float. A Div of a product of dims by a number it divides is the quotient:
original Swin's B = int(windows.shape[0] / (H * W / ws / ws)) of the windows' batch * nW is the
batch's size, and its view(B, ...) keeps rows their own (refused before: a tester, session 61).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np

from server.backends.onnx_dim_products import Factors, divided, divided_by, of_dim, product

Dims = list[int | str | None]
MAX_ELEMENTS = 64  # larger tensors are not followed
COMPUTED = frozenset({"Add", "Sub", "Mul", "Div", "Mod", "Neg", "Max", "Min", "Floor", "Ceil", "Abs"})
_EXACT_FLOATS = 2**24  # every whole number up to this is exact as a float32


@dataclass(frozen=True)
class Made:
    """An entry computed from named dims (`names`): N + 1, min(N, 2), N * H, N == 3; `factors`
    where it is a product of them and numbers (onnx_dim_products.py)."""

    names: frozenset[str]
    factors: Factors | None = field(default=None, compare=False)  # more said, the same entry


Entry = int | str | Made | None


def computed(
    op: str, values: list[np.ndarray], fmod: bool = False, floating: bool = False
) -> np.ndarray | None:
    """Integer arithmetic on entries all known (a pad's length: 8 less the 6 written), as ONNX
    does it: a Div truncates toward zero, a Mod takes the divisor's sign (`fmod`: the dividend's).
    Floored, (6 - 7) / 2 + 1 had read a pad of 1 on the batch's axis as 0 (a tester, s57).
    `floating`: whole floats, a Div's entries known only where it is exact, a Mod not followed."""
    if floating and op == "Mod":
        return None
    unary = {"Neg": np.negative, "Abs": np.abs, "Floor": np.floor, "Ceil": np.ceil}
    binary = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Max": np.maximum, "Min": np.minimum}
    if op in unary and len(values) == 1:
        made = unary[op](values[0])
    elif op in binary and len(values) == 2:
        made = binary[op](values[0], values[1])
    elif op in ("Div", "Mod") and len(values) == 2 and np.all(values[1] != 0):
        if op == "Div":
            made = np.sign(values[0]) * np.sign(values[1]) * (np.abs(values[0]) // np.abs(values[1]))
        else:
            made = np.fmod(*values) if fmod else np.mod(*values)
    else:
        return None
    done = np.array(np.asarray(made, np.int64).tolist(), dtype=object)
    if floating and op == "Div":  # 7.0 / 2.0 is 3.5: not followed
        done[np.asarray(np.mod(values[0], values[1]) != 0)] = None
    return done


def symbolic(
    op: str,
    values: list[np.ndarray],
    fmod: bool = False,
    floating: bool = False,
    spelled: Callable[[Dims], Dims] = list,
) -> np.ndarray | None:
    """Arithmetic, an Equal or a Where entry by entry, some entries names or Made: a result made
    from a name is Made from it (an Equal of a dim with a negative number is 0, a Where with a
    known condition picks, a Div of a product that divides exactly the quotient), one made from
    unknowns None."""
    try:
        size = math.prod(np.broadcast_shapes(*(value.shape for value in values)))
    except ValueError:
        return None
    if size > MAX_ELEMENTS:  # counted first: three of 64 had made 64 ** 3 (a tester, s57)
        return None
    spread = np.broadcast_arrays(*values)
    made = np.empty(spread[0].shape, dtype=object)
    for at in np.ndindex(made.shape):
        made[at] = _entry(op, [cast(Entry, part[at]) for part in spread], fmod, floating, spelled)
    return made


def _entry(
    op: str,
    operands: Sequence[Entry],
    fmod: bool = False,
    floating: bool = False,
    spelled: Callable[[Dims], Dims] = list,
) -> Entry:
    if op == "Where" and len(operands) == 3 and isinstance(operands[0], int):
        return operands[1] if operands[0] else operands[2]
    if op == "Div" and len(operands) == 2 and operands[1] is not None:
        exact = _exact_quotient(operands[0], operands[1], spelled)
        if exact is not None:
            return exact
    if op in ("Max", "Min") and len(operands) == 2:
        kept = _kept_dim(op, operands[0], operands[1])
        if kept is not None:
            return kept
    if op == "Equal" and len(operands) == 2:
        if all(isinstance(v, int) for v in operands):
            return int(operands[0] == operands[1])
        if any(isinstance(v, int) and v < 0 for v in operands) and any(isinstance(v, str) for v in operands):
            return 0  # a dim's length is never negative: a legacy expand's -1 test
    names: set[str] = set()
    for value in operands:
        if isinstance(value, str):
            names.add(value)
        elif isinstance(value, Made):
            names.update(value.names)
    if names:
        multiplied = (
            product([factors_of(v) for v in operands]) if op == "Mul" and len(operands) == 2 else None
        )
        return Made(frozenset(names), multiplied)
    if op in COMPUTED and all(isinstance(v, int) for v in operands):
        done = computed(op, [np.asarray(v, np.int64) for v in operands], fmod, floating)
        return None if done is None else done.reshape(-1)[0]
    return None


def _kept_dim(op: str, first: Entry, second: Entry) -> str | None:
    """A Max or Min that gives back a dim: of a dim with itself, or a Max of a dim and a number of at
    most 1 (torch.broadcast_tensors' Expand(t, Max(Shape(x), Shape(w))), w [1, 3]: refused while
    max(N, 1) read as made from the batch's size). Exact for the batch's size, never 0 (validate.py
    refuses 0 rows); a 0 another dim has is the same in every request and in their batch, so reading
    max(0, 1) as that dim names no batch's size where there is none."""
    if isinstance(first, str) and first == second:
        return first
    if op != "Max":
        return None
    for dim, other in ((first, second), (second, first)):
        if isinstance(dim, str) and isinstance(other, int) and other <= 1:
            return dim
    return None


def _exact_quotient(whole: Entry, divisor: Entry, spelled: Callable[[Dims], Dims]) -> Entry:
    """A product of dims (a fold's spelled out) over a number it divides, or a product of some of
    its dims (a Swin's windows of a batch, N * hq * wq, over its mask's, hq * wq): a number, a dim's
    name, or Made of the rest; None where it is no product or does not divide."""
    if isinstance(whole, int) or whole is None:
        return None
    factors = spelled_factors(factors_of(whole), spelled)
    if isinstance(divisor, int):
        left = None if factors is None else divided(factors, divisor)
    else:
        part = spelled_factors(factors_of(divisor), spelled)
        left = None if factors is None or part is None or part[0] <= 0 else divided_by(factors, part)
    if left is None:
        return None
    number, names = left
    if not names:
        return number
    if number == 1 and len(names) == 1:
        return names[0]
    return Made(frozenset(names), left)


def factors_of(entry: Entry) -> Factors | None:
    return entry.factors if isinstance(entry, Made) else of_dim(entry)


def spelled_factors(factors: Factors | None, spelled: Callable[[Dims], Dims]) -> Factors | None:
    if factors is None:
        return None
    return product([(factors[0], ()), *(of_dim(d) for d in spelled(list(factors[1])))])


def whole_floats(value: np.ndarray) -> np.ndarray | None:
    """A float constant's entries where every one is whole and exact as a float (4.0, not 0.5)."""
    if value.size > MAX_ELEMENTS or not np.all(np.isfinite(value)):
        return None
    if not np.all(np.floor(value) == value) or np.any(np.abs(value) > _EXACT_FLOATS):
        return None
    return np.array(value.astype(np.int64).tolist(), dtype=object).reshape(value.shape)
