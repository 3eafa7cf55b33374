"""ServiceTimeEstimator pinned where mutation testing (scripts/mutation.sh) found it untested: its
defaults, argument bounds, the median and quantile indices, row sums and the CPU-cost EWMA."""

from __future__ import annotations

import pytest

from batcher.estimate import ServiceTimeEstimator


def fed(seconds: list[float], est: ServiceTimeEstimator | None = None, rows: int = 1) -> ServiceTimeEstimator:
    est = est or ServiceTimeEstimator()
    for s in seconds:
        est.observe(rows, s, 0.0)
    return est


def test_default_window_keeps_the_last_16_runs() -> None:
    # 9 slow runs then 8 fast: the window of 16 holds 8 of each, so the median is fast and the
    # prediction is capped at 1.5 x 1.0; a window of 17 would hold 9 slow (median 10).
    assert fed([10.0] * 9 + [1.0] * 8).predict(1, 0.0) == pytest.approx(1.5)


def test_a_window_of_two_forgets_older_runs() -> None:
    assert fed([10.0, 1.0, 1.0], ServiceTimeEstimator(window=2)).predict(1, 0.0) == pytest.approx(1.0)


def test_default_half_life_is_five_seconds() -> None:
    assert fed([1.0]).predict(1, 5.0) == pytest.approx(0.5)
    assert fed([1.0], ServiceTimeEstimator(half_life_s=2.0)).predict(1, 4.0) == pytest.approx(0.25)


def test_default_margin_is_half_the_median() -> None:
    assert fed([1.0] * 5 + [10.0] * 5).predict(1, 0.0) == pytest.approx(1.5)


def test_median_of_an_odd_window_is_the_middle_run() -> None:
    assert fed([1.0, 2.0, 10.0]).predict(1, 0.0) == pytest.approx(3.0)  # min(10, 1.5 x 2)


def test_quantile_of_two_runs_is_the_slower() -> None:
    assert fed([1.0, 10.0]).predict(1, 0.0) == pytest.approx(1.5)  # min(10, 1.5 x 1)


def test_bounds_are_inclusive() -> None:
    ServiceTimeEstimator(window=1)
    ServiceTimeEstimator(quantile=0.5)
    ServiceTimeEstimator(quantile=1.0)
    with pytest.raises(ValueError, match="quantile"):
        ServiceTimeEstimator(quantile=1.5)


def test_rows_leaving_the_window_leave_the_row_sum() -> None:
    # Bucket 3..4 holds runs of 4 and 4 rows (the run of 3 left): 8 rows over 2 runs, so a run of
    # 8 rows (a bucket never seen) is extrapolated at 8 / 4 = 2 x the bucket's prediction.
    est = ServiceTimeEstimator(window=2)
    for rows in (3, 4, 4):
        est.observe(rows, 1.0, 0.0)
    assert est.predict(8, 0.0) == pytest.approx(2.0)


def test_a_one_row_run_counts_one_row() -> None:
    assert fed([1.0]).predict(2, 0.0) == pytest.approx(2.0)


def test_cpu_cost_is_an_ewma_and_cheap_is_inclusive() -> None:
    est = ServiceTimeEstimator()
    est.observe(1, 1.0, 0.0, cpu_s=0.5)
    assert est.cheap(1, 0.5)
    est.observe(1, 1.0, 0.0, cpu_s=1.5)  # 0.5 + 0.2 x (1.5 - 0.5) = 0.7
    assert est.cheap(1, 0.71) and not est.cheap(1, 0.69)


def test_cheap_needs_a_recent_cheap_run_at_least_as_large_in_bytes() -> None:
    est = ServiceTimeEstimator(window=2)
    est.observe(1, 1e-4, 0.0, cpu_s=1e-4, nbytes=100)
    assert est.cheap(1, 1e-3, 100) and not est.cheap(1, 1e-3, 101)
    est.observe(1, 2e-3, 0.0, cpu_s=2e-3, nbytes=1000)  # larger, and not cheap itself
    assert not est.cheap(1, 1e-3, 1000)  # the bucket's EWMA is (0.48 ms), that run was not
    assert est.cheap(1, 1e-3, 100)
    est.observe(1, 1e-4, 0.0, cpu_s=1e-4, nbytes=50)  # a window of 2: the 100-byte run leaves
    assert not est.cheap(1, 1e-3, 100) and est.cheap(1, 1e-3, 50)
    assert not est.cheap(2, 1e-3, 0)  # another bucket: unknown
