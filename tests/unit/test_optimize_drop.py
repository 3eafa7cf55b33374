"""The accuracy drop `sluiceway optimize` bounds: cosine alone was blind to scale."""

from __future__ import annotations

import numpy as np
import pytest

from server.optimize.validate import _Tally, accuracy_drop


def drop(original: np.ndarray, optimized: np.ndarray) -> float:
    tally = _Tally()
    tally.add("y", original, optimized)
    return accuracy_drop("cosine", [tally.result("y")])


def test_outputs_that_halved_are_a_drop_of_one_half() -> None:
    """An FP16 conversion that clamped large weights halved every output: drop 0 before."""
    x = np.random.default_rng(0).standard_normal((64, 8))
    assert drop(x, x) == pytest.approx(0.0, abs=1e-12)
    assert drop(x, 0.5 * x) == pytest.approx(0.5)


def test_one_value_a_row_is_judged_by_its_size_not_only_its_sign() -> None:
    """For [N, 1] outputs cosine only checks the sign: a regression off by 57% passed with 0."""
    y = np.abs(np.random.default_rng(1).standard_normal((64, 1))) + 1.0
    assert drop(y, y * 1.001) == pytest.approx(0.001)
    assert drop(y, y * 0.43) == pytest.approx(0.57)


def test_the_drop_stays_within_zero_and_one() -> None:
    """A negative cosine had made a drop of 2, past the documented [0, 1]."""
    x = np.ones((4, 3))
    assert drop(x, -x) == 1.0
    assert drop(np.zeros((2, 3)), np.ones((2, 3))) == 1.0
    assert drop(np.zeros((2, 3)), np.zeros((2, 3))) == 0.0


def test_string_outputs_are_compared_row_by_row() -> None:
    """Strings made the float comparison raise: a BYTES-output model could not be validated."""
    a = np.array([["x"], ["y"], ["z"]], dtype=object)
    assert drop(a, a.copy()) == 0.0
    assert drop(a, np.array([["x"], ["q"], ["z"]], dtype=object)) == 1.0
