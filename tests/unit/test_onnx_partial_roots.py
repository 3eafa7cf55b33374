"""Square roots and whole powers of entries known in part (server/backends/onnx_partial_ints.py
`_root`): ViT's and Swin's int(L ** 0.5) of a fixed token count, followed only where the result is
whole and exact as a float. Session 66."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from server.backends.onnx_partial_ints import PartialInts


def _rooted(op: str, entries: list[object], exponent: float | None = None) -> tuple[object, ...] | None:
    partial = PartialInts()
    partial.known["l"] = np.array(entries, dtype=object)
    inputs = ["l"] if op == "Sqrt" else ["l", "e"]
    node = helper.make_node(op, inputs, ["out"])
    given = None if exponent is None else np.asarray(exponent, np.float32)
    partial.see(node, lambda _: None, lambda i: given if i == 1 else None)
    return partial.named("out", None)


@pytest.mark.parametrize(
    ("op", "entries", "exponent", "want"),
    [
        ("Sqrt", [16, 15, 0, 1], None, (4, None, 0, 1)),  # 15 has no whole root
        ("Pow", [16, 15], 0.5, (4, None)),
        ("Pow", [3, -2], 2.0, (9, 4)),
        ("Pow", [2], 8.0, (256,)),  # the highest power followed
        ("Pow", [2], 9.0, None),
        ("Pow", [7], 0.0, (1,)),
        ("Pow", [2], 1.5, None),
        ("Pow", [2], -1.0, None),
        ("Pow", [4097, 4096], 2.0, (None, 2**24)),  # 4097 ** 2 is past 2 ** 24: not exact as a float
        ("Sqrt", ["T", -4], None, (None, None)),  # a name, a negative
    ],
)
def test_whole_roots_and_powers_are_followed(
    op: str, entries: list[object], exponent: float | None, want: tuple[object, ...] | None
) -> None:
    assert _rooted(op, entries, exponent) == want


def test_a_power_of_no_known_exponent_is_not_followed() -> None:
    assert _rooted("Pow", [16], None) is None
    partial = PartialInts()
    partial.known["l"] = np.array([16, 9], dtype=object)
    pow_ = helper.make_node("Pow", ["l", "e"], ["out"])  # an exponent per entry: not followed
    partial.see(pow_, lambda _: None, lambda i: np.array([0.5, 0.5], np.float32) if i == 1 else None)
    assert partial.named("out", None) is None
