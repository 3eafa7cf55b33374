"""ServiceTimeEstimator pinned where the whole-scope mutation run of 2026-12-05 left survivors: the
count of runs observed (what the wait forecast's figures read as last seen hang on), the input bytes
a run is recorded with, the rows sum once a bucket's slow first run leaves, and which runs the
"cannot finish" floor and its wording (`floor_basis`) count.

Buckets: 1 row -> 0, 2 -> 1, 3..4 -> 2, 5..8 -> 3. Seconds are binary fractions (0.125, 0.25...) so
the figures are exact; fake clock values only.
"""

from __future__ import annotations

import pytest

from batcher.estimate import ServiceTimeEstimator

T0 = 100.0  # when the runs were seen


def runs(est: ServiceTimeEstimator, rows: int, *seconds: float, at: float = T0) -> None:
    for s in seconds:
        est.observe(rows, s, at)


# -- the count of runs observed -----------------------------------------------------------------------


def test_runs_counts_each_run_observed_from_zero() -> None:
    """`runs` is what a figure read as last seen is kept against (WaitForecast._fresh): it counts the
    runs observed, one each, from 0 (not from 1, not down, not two a run)."""
    est = ServiceTimeEstimator()
    assert est.runs == 0
    est.observe(1, 0.125, T0)
    assert est.runs == 1
    est.observe(4, 0.25, T0)
    est.observe(1, 0.125, T0)
    assert est.runs == 3


# -- the input bytes a run is recorded with -----------------------------------------------------------


def test_a_run_observed_without_its_input_bytes_proves_no_larger_input_cheap() -> None:
    """A run observed with no `nbytes` is recorded as 0 input bytes: it shows a run of no input cheap,
    not one of 1 byte or more (a default of 1 would let a 1-byte input run inline on it)."""
    est = ServiceTimeEstimator()
    est.observe(1, 0.001, T0, cpu_s=0.001)
    assert est.cheap(1, 0.01)
    assert est.cheap(1, 0.01, nbytes=0)
    assert not est.cheap(1, 0.01, nbytes=1)


# -- the rows sum once a slow first run leaves -------------------------------------------------------


def test_a_slow_first_run_that_leaves_takes_its_rows_out_of_the_sum() -> None:
    """A bucket's first run slower than its second leaves the window, and its rows leave the sum the
    by-rows guess divides by: one 1-row run of 125 ms left, so 2 rows (bucket never seen) are guessed
    2 x 125 ms = 250 ms. Keeping its row in the sum (or adding it again) halves or thirds the guess."""
    est = ServiceTimeEstimator(max_margin=0.0)
    runs(est, 1, 0.5, 0.125)
    assert est.predict_seen(1, T0) == pytest.approx(0.125)  # the first run has left
    assert est.predict(2, T0) == pytest.approx(0.25)
    runs(est, 1, 0.125)  # two runs of 1 row now: still 125 ms a row
    assert est.predict(2, T0) == pytest.approx(0.25)


# -- the floor: which runs count ---------------------------------------------------------------------


def test_a_one_row_floor_is_not_set_by_two_row_runs() -> None:
    """Only runs of 1 row bound a 1-row request: with only 2-row runs seen, nothing proves a 1-row run
    takes any time (0.0), however many 2-row runs there were."""
    est = ServiceTimeEstimator()
    runs(est, 2, 0.25, 0.25, 0.25)
    assert est.predict_floor(1, T0) == 0.0
    assert est.floor_basis(1, T0) == "the fastest recent run of 1 rows or fewer"
    assert est.predict_floor(2, T0) == pytest.approx(0.25)


def test_runs_of_more_rows_in_a_requests_own_bucket_do_not_bound_it() -> None:
    """A 3-row request shares bucket 3..4 with 4-row runs, which prove nothing about 3 rows: with
    only 4-row runs seen its floor is 0.0; once a 3-row run is seen, that run is its floor."""
    est = ServiceTimeEstimator()
    runs(est, 4, 0.25, 0.25, 0.25)
    assert est.predict_floor(3, T0) == 0.0
    assert est.predict_floor(4, T0) == pytest.approx(0.25)
    runs(est, 3, 0.375)
    assert est.predict_floor(3, T0) == pytest.approx(0.375)


def test_the_basis_words_the_range_of_rows_of_the_runs_that_set_the_floor() -> None:
    """Runs of 3 and of 4 rows in bucket 3..4 set a 4-row request's floor (3 of them, raising it above
    the 1-row run's 125 ms): the wording says "3 to 4 rows", not "3 rows"."""
    est = ServiceTimeEstimator()
    runs(est, 1, 0.125)
    est.observe(3, 0.375, T0)
    est.observe(4, 0.5, T0)  # slower than the first: the first stays
    est.observe(3, 0.4375, T0)
    assert est.predict_floor(4, T0) == pytest.approx(0.375)
    assert est.floor_basis(4, T0) == "the fastest of 3 recent runs of 3 to 4 rows"


def test_the_basis_words_the_floor_as_faded_at_the_clock_time_asked() -> None:
    """Which figure is the floor depends on fading: 60 s after three 2-row runs of 250 ms (half-life
    5 s, their fastest ever fades 6x slower: x 0.25) they bound at 62.5 ms, below the 1-row run of
    125 ms just seen, so the floor is the fastest run of any size, and the basis must say so; read
    unfaded it would name the 2-row runs (250 ms > 125 ms)."""
    est = ServiceTimeEstimator(half_life_s=5.0)
    runs(est, 2, 0.25, 0.25, 0.25, at=T0)
    runs(est, 1, 0.125, at=T0 + 60.0)
    assert est.predict_floor(2, T0 + 60.0) == pytest.approx(0.0625)
    # Faded to a quarter, it says the run's own time too (a tester, session 58, had read the faded
    # figure as a run's).
    assert est.floor_basis(2, T0 + 60.0) == (
        "the fastest recent run of 2 rows or fewer, 250.0 ms when seen, faded with its age"
    )
    # At T0, when the 2-row runs were seen (not faded), they do raise it, and the wording names them.
    assert est.predict_floor(2, T0) == pytest.approx(0.25)
    assert est.floor_basis(2, T0) == "the fastest of 3 recent runs of 2 rows"


def test_on_a_tie_the_basis_names_the_bucket_that_set_the_floor_first() -> None:
    """Two buckets' runs (3 of 2 rows, 4 of 4 rows) both bound a 4-row request at 250 ms, above the
    1-row run's 125 ms: the first bucket seen to reach that figure is the one named; a later one of
    the same figure does not take its place."""
    est = ServiceTimeEstimator()
    runs(est, 2, 0.25, 0.25, 0.25)
    runs(est, 4, 0.25, 0.25, 0.25, 0.25)
    runs(est, 1, 0.125)
    assert est.predict_floor(4, T0) == pytest.approx(0.25)
    assert est.floor_basis(4, T0) == "the fastest of 3 recent runs of 2 rows"
