"""ServiceTimeEstimator's figure for a size once a batch of a new size has run (`predict_after`,
what the wait forecast cuts a backlog by) and the cap from the nearest larger size seen (`_above`),
pinned where mutation testing (scripts/mutation.sh) found them untested: which bucket is the nearest
seen at or below a size (down to the 1-row bucket, and none), when the assumed run is the size's own,
and that every figure read at a clock time is faded as of that time.

Buckets: 1 row -> 0, 2 -> 1, 3..4 -> 2, 5..8 -> 3. `max_margin=0` and one run a bucket: a bucket's
figure is its run's seconds. `half_life_s=1`: a figure 1 s old is halved, 2 s old quartered. Fake
clock values only.
"""

from __future__ import annotations

import pytest

from batcher.estimate import ServiceTimeEstimator
from tests.unit.test_floor_fade import runs

T0 = 50.0  # when the runs were seen


def estimator() -> ServiceTimeEstimator:
    return ServiceTimeEstimator(max_margin=0.0, half_life_s=1.0)


# -- the cap from a larger size seen, faded as of `now` ----------------------------------------------


def test_a_larger_sizes_cap_fades_as_the_by_rows_guess_does() -> None:
    est = estimator()
    runs(est, 1, 0.1, at=T0)
    runs(est, 4, 0.12, at=T0)
    # By rows 2 x 0.1 = 0.2; the 4-row runs took 0.12: 2 rows no longer. Both halved 1 s later.
    assert est.predict(2, None) == pytest.approx(0.12)
    assert est.predict(2, T0) == pytest.approx(0.12)
    assert est.predict(2, T0 + 1.0) == pytest.approx(0.06)
    assert est.predict(2, T0 + 2.0) == pytest.approx(0.03)


def test_the_cap_is_faded_by_the_larger_sizes_own_age() -> None:
    est = estimator()
    runs(est, 4, 0.12, at=T0)  # seen 2 s before the 1-row run
    runs(est, 1, 0.1, at=T0 + 2.0)
    now = T0 + 2.0
    # By rows 0.2 (fresh); the 4-row figure 0.12 x 0.25 = 0.03 (not 0.12 unfaded, nor 0.48 = 0.12 / 0.25).
    assert est.predict(2, now) == pytest.approx(0.03)
    assert est.predict(2, None) == pytest.approx(0.12)  # as last seen: neither faded


def test_with_no_larger_size_seen_the_by_rows_guess_stands() -> None:
    est = estimator()
    runs(est, 1, 0.1, at=T0)
    assert est.predict(4, T0) == pytest.approx(0.4)
    assert est.predict(4, T0 + 1.0) == pytest.approx(0.2)
    runs(est, 2, 0.15, at=T0)  # a 2-row size: smaller than 4 rows, so no cap for them
    assert est.predict(4, T0) == pytest.approx(0.3)  # by rows from the nearest smaller, 2 rows


def test_the_nearest_larger_size_caps_not_a_farther_one() -> None:
    est = estimator()
    runs(est, 1, 0.1, at=T0)
    runs(est, 4, 0.15, at=T0)
    runs(est, 8, 0.12, at=T0)
    assert est.predict(2, T0) == pytest.approx(0.15)  # the 3..4-row bucket's, not the 5..8-row's 0.12


# -- predict_after: the assumed run is the size's own bucket -------------------------------------------


def test_a_run_of_the_sizes_own_bucket_is_what_it_took_whatever_its_rows() -> None:
    est = estimator()
    runs(est, 1, 0.1, at=T0)
    # 3 rows took 0.3: a 4-row run (same bucket) is predicted 0.3, not 0.4 by rows; and fresh, not faded.
    assert est.predict_after(4, T0 + 1.0, 3, 0.3) == pytest.approx(0.3)
    assert est.predict_after(3, T0 + 1.0, 4, 0.3) == pytest.approx(0.3)  # not 0.225 by rows
    assert est.predict_after(8, T0, 5, 0.2) == pytest.approx(0.2)  # not 0.32
    assert est.predict_after(4, None, 3, 0.3) == pytest.approx(0.3)


def test_with_nothing_seen_the_assumed_run_sets_the_figure() -> None:
    est = estimator()
    assert est.predict(4, T0) == 0.0  # unknown
    assert est.predict_after(1, T0, 1, 0.1) == pytest.approx(0.1)
    assert est.predict_after(4, T0, 3, 0.3) == pytest.approx(0.3)
    assert est.predict_after(4, T0, 2, 0.1) == pytest.approx(0.2)  # larger than it: by rows
    assert est.predict_after(8, None, 1, 0.1) == pytest.approx(0.8)
    assert est.predict_after(1, T0, 2, 0.1) == 0.0  # a larger run says nothing of a smaller size


def test_with_only_larger_sizes_seen_the_assumed_run_is_capped_by_them() -> None:
    est = estimator()
    runs(est, 8, 0.12, at=T0)
    assert est.predict(2, T0) == 0.0  # nothing of 2 rows or fewer seen
    assert est.predict_after(2, T0, 1, 0.1) == pytest.approx(0.12)  # 0.2 by rows, the 8-row runs 0.12
    assert est.predict_after(2, T0 + 1.0, 1, 0.1) == pytest.approx(0.06)  # the cap faded, as of now
    assert est.predict_after(2, None, 1, 0.1) == pytest.approx(0.12)
    assert est.predict_after(2, T0, 1, 0.05) == pytest.approx(0.1)  # by rows, under the cap


# -- predict_after: the assumed run between the nearest smaller size seen and the size ----------------


def test_a_run_above_the_one_row_bucket_is_what_a_larger_size_is_guessed_from() -> None:
    est = estimator()
    runs(est, 1, 0.1, at=T0)
    assert est.predict(4, T0) == pytest.approx(0.4)  # by rows from 1 row
    assert est.predict_after(4, T0, 2, 0.1) == pytest.approx(0.2)  # by rows from 2 rows
    assert est.predict_after(8, T0, 2, 0.1) == pytest.approx(0.4)
    assert est.predict_after(8, T0, 4, 0.1) == pytest.approx(0.2)
    assert est.predict_after(8, T0 + 1.0, 4, 0.1) == pytest.approx(0.2)  # the assumed run: fresh


def test_a_run_below_the_nearest_size_seen_changes_nothing() -> None:
    est = estimator()
    runs(est, 4, 0.2, at=T0)
    # Nearest seen at or below 8 rows: 3..4 rows. A 2-row run is below it: 8 rows stay 2 x 0.2.
    assert est.predict_after(8, T0, 2, 0.05) == pytest.approx(0.4)
    assert est.predict_after(8, T0, 1, 0.05) == pytest.approx(0.4)
    assert est.predict_after(8, T0 + 1.0, 2, 0.05) == pytest.approx(0.2)  # as predict: faded
    assert est.predict_after(8, None, 2, 0.05) == pytest.approx(0.4)


def test_a_run_below_a_two_row_size_seen_changes_nothing() -> None:
    est = estimator()
    runs(est, 2, 0.2, at=T0)
    # The nearest seen at or below 8 rows is the 2-row bucket (1): a 1-row run (bucket 0) is below it.
    assert est.predict_after(8, T0, 1, 0.05) == pytest.approx(0.8)
    assert est.predict_after(4, T0, 1, 0.05) == pytest.approx(0.4)
    assert est.predict_after(8, T0, 4, 0.1) == pytest.approx(0.2)  # above it: from the 4-row run


def test_the_nearest_size_seen_is_found_however_far_below() -> None:
    est = estimator()
    runs(est, 1, 0.1, at=T0)
    runs(est, 4, 0.3, at=T0)
    # At or below 8 rows the nearest seen is 3..4 rows (bucket 2, one below 8's), not 1 row.
    assert est.predict_after(8, T0, 2, 0.05) == pytest.approx(0.6)
    # At or below 16 rows (bucket 4) too: two buckets down, bucket 3 between unseen.
    assert est.predict_after(16, T0, 2, 0.05) == pytest.approx(1.2)
    assert est.predict_after(16, T0, 8, 0.4) == pytest.approx(0.8)  # between: from the 8-row run


def test_the_guess_from_the_assumed_run_is_capped_by_a_larger_size_faded_as_of_now() -> None:
    est = estimator()
    runs(est, 1, 0.1, at=T0)
    runs(est, 8, 0.2, at=T0)
    # 4 rows from an assumed 2-row run of 0.15: 0.3 by rows; the 8-row runs took 0.2.
    assert est.predict_after(4, T0, 2, 0.15) == pytest.approx(0.2)
    assert est.predict_after(4, T0 + 1.0, 2, 0.15) == pytest.approx(0.1)  # the cap halved 1 s later
    assert est.predict_after(4, None, 2, 0.15) == pytest.approx(0.2)
    assert est.predict_after(4, T0 + 1.0, 2, 0.05) == pytest.approx(0.1)  # 0.1 by rows, cap 0.1


# -- predict_after: a size already seen, or a run not below the size, is `predict` as of `now` ----------


def test_a_run_of_a_size_seen_is_predict_faded_as_of_now() -> None:
    est = estimator()
    runs(est, 1, 0.1, at=T0)
    assert est.predict_after(1, T0 + 1.0, 1, 0.5) == pytest.approx(0.05)  # the 1-row figure, halved
    assert est.predict_after(2, T0 + 1.0, 1, 0.5) == pytest.approx(0.1)  # by rows from it, halved
    assert est.predict_after(1, None, 1, 0.5) == pytest.approx(0.1)


def test_a_run_larger_than_the_size_is_predict_faded_as_of_now() -> None:
    est = estimator()
    runs(est, 1, 0.1, at=T0)
    assert est.predict_after(1, T0 + 2.0, 2, 0.3) == pytest.approx(0.025)
    assert est.predict_after(1, T0 + 2.0, 4, 0.3) == pytest.approx(0.025)


# -- an assumed run of a larger size: as observing it would make the figure --------------------------


def after_observing(est: ServiceTimeEstimator, rows: int, ran: int, ran_s: float) -> float:
    """`predict(rows, None)` once a run of `ran` rows taking `ran_s` is really seen (at T0)."""
    runs(est, ran, ran_s, at=T0)
    return est.predict(rows, None)


@pytest.mark.parametrize(
    ("seen", "rows", "ran", "ran_s"),
    [
        ([(1, 0.1)], 2, 4, 0.1),  # the larger run caps 2 rows (by rows 0.2): 0.1
        ([(1, 0.1)], 2, 4, 0.5),  # a cap above the by-rows guess changes nothing: 0.2
        ([(1, 0.1), (8, 0.15)], 2, 4, 0.12),  # nearer than the 8-row size seen: its cap replaces
        ([(1, 0.1), (3, 0.11)], 2, 8, 0.05),  # farther than the 3-row size seen: that one still caps
        ([(2, 0.1)], 2, 8, 0.01),  # the size's own bucket seen: its figure stands
        ([(4, 0.1)], 2, 8, 0.01),  # nothing seen at or below: unknown, 0.0
    ],
)
def test_an_assumed_larger_run_gives_the_figure_seeing_it_would(
    seen: list[tuple[int, float]], rows: int, ran: int, ran_s: float
) -> None:
    """A run assumed to be larger than `rows`, in a bucket not seen, caps `rows` as the nearest larger
    size seen would: it had been ignored (`predict` unchanged), and the wait forecast, which cuts a
    backlog by these figures, overestimated a queue's wait (12 rows at max_batch_size 8, 1-row runs
    of 0.1015 s: 0.533 s forecast where formation's batches took 0.320 s)."""
    est, observed = estimator(), estimator()
    for size, seconds in seen:
        runs(est, size, seconds, at=T0)
        runs(observed, size, seconds, at=T0)
    expected = after_observing(observed, rows, ran, ran_s)
    assert est.predict_after(rows, None, ran, ran_s) == pytest.approx(expected)


def test_an_assumed_larger_run_caps_the_smaller_sizes_figure_faded_as_of_now() -> None:
    """The smaller size seen is scaled and faded as of `now` (a half-life later: half), then capped
    by the assumed run, which is taken as just made: min(0.2 * 0.5, 0.5)."""
    est = estimator()
    runs(est, 1, 0.1, at=T0)
    assert est.predict_after(2, T0 + 1.0, 4, 0.5) == pytest.approx(0.1)
    assert est.predict_after(2, T0 + 1.0, 4, 0.05) == pytest.approx(0.05)
