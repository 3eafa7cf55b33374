"""The accuracy drop `sluiceway optimize` bounds: cosine alone was blind to scale, and a row's own
norm as the scale made a near-zero output's rounding a drop of one half."""

from __future__ import annotations

import numpy as np
import pytest

from server.optimize.data import OptimizeError
from server.optimize.validate import _Tally, accuracy_drop


def drop(original: np.ndarray, optimized: np.ndarray) -> float:
    tally = _Tally()
    tally.add("y", original, optimized)
    return accuracy_drop("cosine", [tally.result("y")])


def test_outputs_that_halved_are_a_drop_of_one_half() -> None:
    """An FP16 conversion that clamped large weights halved every output: drop 0 before."""
    x = np.random.default_rng(0).standard_normal((64, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)  # rows of one norm: the RMS row norm is 1
    assert drop(x, x) == pytest.approx(0.0, abs=1e-12)
    assert drop(x, 0.5 * x) == pytest.approx(0.5)


def test_one_value_a_row_is_judged_by_its_size_not_only_its_sign() -> None:
    """For [N, 1] outputs cosine only checks the sign: a regression off by 57% passed with 0."""
    y = np.full((64, 1), 2.0)
    assert drop(y, y * 1.001) == pytest.approx(0.001)
    assert drop(y, y * 0.43) == pytest.approx(0.57)


def test_the_error_is_judged_against_the_outputs_typical_size_not_the_rows_own() -> None:
    """A score of 0.0589 that became 0.0884 was a drop of 0.50 (|1 - |b| / |a||) and a refusal,
    where the error was 4% of a typical score. Now: the largest row error over the RMS row norm."""
    y = np.full((64, 1), 0.75)
    y[0] = 0.0589
    z = y.copy()
    z[0] = 0.0884
    rms = np.sqrt(np.mean(y**2))
    assert drop(y, z) == pytest.approx((0.0884 - 0.0589) / rms)
    assert drop(y, z) < 0.05
    # One row far off is still the worst row, against the same scale.
    z[5] = 0.5
    assert drop(y, z) == pytest.approx(0.25 / rms)


def test_nan_in_the_optimized_output_is_a_drop_of_one_and_is_named() -> None:
    """NaN gave a table of nan and 0 figures and a drop of 1 that did not say why."""
    y = np.ones((8, 3))
    z = y.copy()
    z[2, 1] = np.nan
    tally = _Tally()
    tally.add("y", y, z)
    result = tally.result("y")
    assert result.nonfinite_rows == 1 and np.isfinite(result.max_abs) and result.max_abs == 0.0
    assert accuracy_drop("cosine", [result]) == 1.0
    original = _Tally()
    with pytest.raises(OptimizeError, match="original model's output 'y' holds NaN or infinity on 1"):
        original.add("y", z, y)


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
