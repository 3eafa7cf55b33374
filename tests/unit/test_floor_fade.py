"""The "cannot finish" floor fades with age as the other figures only where the runs may have been
outliers; elsewhere not below the fastest run ever seen, which itself fades six times slower (a
floor that never faded refused for good a model whose runs vary by their inputs); the by-rows
guess for a size never run stays below what a larger size took.

A tester's report (a 100 ms model warmed with 5 runs, then one request with a 60 ms deadline every
5 s): 5 of 6 were computed and answered late (DEADLINE_EXCEEDED at ~63 ms); at one a second, 3 of
15. The refusal said 87 -> 76 -> 66 -> 58 ms needed, then the request ran: the floor, the fastest of
many 100 ms runs, faded with a 5 s half-life though no run had been an outlier. Fake clocks.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from batcher import BatchingPolicy, DeadlineExceeded, DynamicBatcher, ModelStats, Tensors
from batcher.estimate import ServiceTimeEstimator
from tests.support.batcher_fakes import Clock, Gated

NOW = 100.0
LONG = 5.0  # an upper bound no healthy wait comes near


def runs(est: ServiceTimeEstimator, rows: int, *seconds: float, at: float = NOW) -> None:
    for s in seconds:
        est.observe(rows, s, at)


# -- the floor ------------------------------------------------------------------------------------


def test_a_floor_several_runs_show_fades_six_times_slower() -> None:
    est = ServiceTimeEstimator(half_life_s=5.0)
    runs(est, 1, 0.100, 0.102, 0.101, 0.104, 0.100)
    for idle_s, floor in ((5.0, 0.100 * 0.5 ** (1 / 6)), (30.0, 0.050), (60.0, 0.025)):
        assert est.predict_floor(1, NOW + idle_s) == pytest.approx(floor)
        assert est.predict_floor(4, NOW + idle_s) == pytest.approx(floor)  # no more rows: the same
    assert est.predict_floor(1, NOW + 3600.0) < 0.001  # never for good
    assert est.predict(1, NOW + 5.0) < 0.1  # the other figures fade as before


def test_a_floor_of_one_or_two_runs_fades_as_before() -> None:
    """One slow run (a cold start, a hang) must not refuse requests for good: nothing refused runs."""
    est = ServiceTimeEstimator(half_life_s=5.0)
    runs(est, 1, 2.0)
    assert est.predict_floor(1, NOW + 5.0) == pytest.approx(1.0)
    runs(est, 1, 2.1)  # the first, faster, stays: two runs
    assert est.predict_floor(1, NOW + 10.0) == pytest.approx(0.5)


def test_a_model_seen_faster_before_fades_back_to_that_and_no_further() -> None:
    est = ServiceTimeEstimator(half_life_s=5.0)
    runs(est, 1, 0.050, 0.050, 0.050)
    runs(est, 1, *[0.100] * 16)  # a slow spell: the 50 ms runs left the window
    assert est.predict_floor(1, NOW) == pytest.approx(0.100)
    assert est.predict_floor(1, NOW + 2.5) == pytest.approx(0.100 * 0.5**0.5)
    assert est.predict_floor(1, NOW + 60.0) == pytest.approx(0.050 * 0.25)  # 2 of its slow half-lives


def test_only_runs_of_as_many_rows_or_fewer_bound_the_fade() -> None:
    est = ServiceTimeEstimator(half_life_s=5.0)
    runs(est, 3, 0.300, 0.300, 0.300)
    runs(est, 4, 0.100)  # a faster 4-row run says nothing of 3 rows
    assert est.predict_floor(3, NOW + 60.0) == pytest.approx(0.300 * 0.25)
    assert est.predict_floor(4, NOW) == pytest.approx(0.100)


async def test_after_an_idle_spell_a_deadline_below_every_run_is_refused_not_run() -> None:
    clock, be = Clock(NOW), Gated(gate_open=True)
    b = DynamicBatcher([be], BatchingPolicy(max_batch_size=4), ModelStats(), clock)
    b.start()
    try:
        runs(b.estimator, 1, 0.100, 0.101, 0.102, 0.100, 0.103)
        clock.now = NOW + 5.0  # idle 5 s: the other figures halved, the floor ~11% down
        x: Tensors = {"x": np.zeros((1, 1), np.float32)}
        with pytest.raises(DeadlineExceeded, match=r"about 89\.1 ms of compute needed"):
            await asyncio.wait_for(b.submit(x, 1, deadline=clock.now + 0.060), LONG)
        assert be.runs == []  # refused at admission: never computed
        out = await asyncio.wait_for(b.submit(x, 1, deadline=clock.now + 0.150), LONG)
        assert out["y"].shape == (1, 1) and be.runs == [1]
    finally:
        await b.stop(drain=False, timeout_s=0.1)


# -- formation's figure for sizes not run yet ---------------------------------------------------------


def test_a_size_never_run_is_guessed_by_rows_but_not_above_a_larger_size_seen() -> None:
    est = ServiceTimeEstimator(max_margin=0.0)
    runs(est, 1, 0.1, 0.1)
    assert est.predict(2, NOW) == pytest.approx(0.2)  # by rows: nothing larger seen
    runs(est, 4, 0.1, 0.1)
    assert est.predict(2, NOW) == pytest.approx(0.1)  # 4-row runs took 100 ms: 2 rows no longer
    assert est.predict(8, NOW) == pytest.approx(0.2)  # by rows from the 4-row runs, as before


def test_the_figure_formation_will_read_once_a_batch_of_a_new_size_has_run() -> None:
    est = ServiceTimeEstimator(max_margin=0.0)
    runs(est, 1, 0.1, 0.1)
    assert est.predict_after(2, NOW, 2, 0.1) == pytest.approx(0.1)  # its own size: what it took
    assert est.predict_after(3, NOW, 2, 0.1) == pytest.approx(0.15)  # larger: by rows from it
    assert est.predict_after(1, NOW, 2, 0.1) == pytest.approx(0.1)  # smaller: as before
    runs(est, 2, 0.3, 0.3)
    assert est.predict_after(3, NOW, 2, 0.1) == est.predict(3, NOW)  # a size seen: what was seen
