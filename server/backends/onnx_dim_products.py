"""Products of dims, for a Reshape's -1 that onnx could not name (onnx_partial_ints.py asks).

A ViT's position table resized to its patch grid and viewed pos.view(-1, C, h * w) (h * w a
ReduceProd of the grid's Shape) has a -1 that is 1 at run time; onnx named it `unk__`, and, the
table made from no batched input, x + table read the batch's axis against a length the load cannot
tell: refused, rows independent (a tester, session 60). Here an entry that is a product of dims and
numbers keeps its factors, and a -1 is the data's dims over the other entries where they divide.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

Factors = tuple[int, tuple[str, ...]]  # a number times dims' names, the names sorted


def product(parts: Sequence[Factors | None]) -> Factors | None:
    """The product of `parts`; None where one is not a product of dims and numbers."""
    number, names = 1, list[str]()
    for part in parts:
        if part is None:
            return None
        number *= part[0]
        names.extend(part[1])
    return number, tuple(sorted(names))


def of_dim(dim: int | str | None) -> Factors | None:
    if isinstance(dim, bool) or dim is None:
        return None
    return (dim, ()) if isinstance(dim, int) else (1, (dim,))


def quotient(whole: Factors, part: Factors) -> int | str | None:
    """whole / part where it is a number or one dim (None: it does not divide, or is more)."""
    left = divided_by(whole, part)
    if left is None:
        return None
    number, names = left
    if not names:
        return number
    return names[0] if len(names) == 1 and number == 1 else None


def divided(whole: Factors, divisor: int) -> Factors | None:
    """whole / divisor where it divides exactly (a positive divisor), else None: Swin's
    B = windows.shape[0] / (H * W / ws / ws) of the windows' batch * nW."""
    if divisor <= 0 or whole[0] % divisor:
        return None
    return whole[0] // divisor, whole[1]


def divided_by(whole: Factors, part: Factors) -> Factors | None:
    """whole / part where part's dims are some of whole's and its number divides whole's (None
    else): exact, whatever the dims' sizes (the product of the dims left)."""
    left = Counter(whole[1])
    left.subtract(Counter(part[1]))
    if any(count < 0 for count in left.values()) or part[0] == 0 or whole[0] % part[0]:
        return None
    return whole[0] // part[0], tuple(sorted(left.elements()))


def minus_one(data: Sequence[int | str | None], others: Sequence[Factors | None]) -> int | str | None:
    """A Reshape's -1: the product of its data's dims over that of its other entries."""
    whole = product([of_dim(d) for d in data])
    rest = product(others)
    return None if whole is None or rest is None else quotient(whole, rest)
