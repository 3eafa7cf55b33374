"""batcher/ragged.py: survivors of the 2026-12-05 mutation run (s48): `batch_input`'s values are
int64 whatever counts it is given, none included."""

from __future__ import annotations

import numpy as np

from batcher.ragged import batch_input


def test_batch_input_values_are_int64_even_for_no_counts() -> None:
    """The documented int64 holds for an empty list too, where numpy's default for `[]` is float64;
    with counts it is int64 and the shifted form starts with a 0 of that type."""
    for kind in ("BATCH_ELEMENT_COUNT", "BATCH_ACCUMULATED_ELEMENT_COUNT"):
        assert batch_input(kind, []).dtype == np.int64
    shifted = batch_input("BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO", [])
    assert shifted.dtype == np.int64 and shifted.tolist() == [0]
    assert batch_input("BATCH_ACCUMULATED_ELEMENT_COUNT", [2, 3]).tolist() == [2, 5]
