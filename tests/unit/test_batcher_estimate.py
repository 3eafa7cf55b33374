"""The service-time predictor and the statistics counters."""

from __future__ import annotations

import time

import pytest

from batcher.estimate import ServiceTimeEstimator
from batcher.stats import ModelStats


def test_unknown_cost_is_zero() -> None:
    assert ServiceTimeEstimator().predict(1, 0.0) == 0.0
    assert ServiceTimeEstimator().predict(64, 0.0) == 0.0


def test_median_of_recent_runs_per_bucket() -> None:
    e = ServiceTimeEstimator(window=4, max_margin=0.0)
    e.observe(8, 0.010, 0.0)
    assert e.predict(8, 0.0) == pytest.approx(0.010)  # first sample taken as is
    assert e.predict(5, 0.0) == pytest.approx(0.010)  # same bucket (5..8)
    for seconds in (0.020, 0.030, 0.040, 0.050):  # the window keeps the last 4
        e.observe(8, seconds, 0.0)
    assert e.predict(8, 0.0) == pytest.approx(0.030)  # lower median of 20, 30, 40, 50 ms


def test_unseen_bucket_scales_the_nearest_smaller_by_rows_else_zero() -> None:
    e = ServiceTimeEstimator()
    e.observe(4, 0.004, 0.0)
    assert e.predict(32, 0.0) == pytest.approx(0.032)  # 1 ms a row, as seen at 4 rows
    assert e.predict(3, 0.0) == pytest.approx(0.004)  # same bucket: as seen
    assert e.predict(1, 0.0) == 0.0  # nothing smaller seen: unknown, never rejects early
    e.observe(3, 0.004, 0.0)  # the bucket's runs now average 3.5 rows
    assert e.predict(35, 0.0) == pytest.approx(0.040, rel=0.01)


def test_prediction_adds_the_spread_capped() -> None:
    e = ServiceTimeEstimator(window=11, quantile=0.9, max_margin=0.5)
    for ms in (10, 10, 10, 10, 10, 11, 11, 11, 12, 12, 14):
        e.observe(1, ms / 1000, 0.0)
    assert e.predict(1, 0.0) == pytest.approx(0.012)  # the 90th percentile of the window
    steady = ServiceTimeEstimator()
    for _ in range(20):
        steady.observe(1, 0.010, 0.0)
    assert steady.predict(1, 0.0) == pytest.approx(0.010)  # steady runs: no margin
    steady.observe(1, 0.500, 0.0)  # one outlier (a pause) moves neither median nor quantile
    assert steady.predict(1, 0.0) == pytest.approx(0.010)
    spread = ServiceTimeEstimator(window=4, max_margin=0.5)
    for ms in (10, 10, 40, 40):
        spread.observe(1, ms / 1000, 0.0)
    assert spread.predict(1, 0.0) == pytest.approx(0.015)  # 40 ms capped at 1.5 x the median


def test_estimates_fade_so_one_slow_run_cannot_block_forever() -> None:
    e = ServiceTimeEstimator(half_life_s=1.0, max_margin=0.0)
    e.observe(1, 2.0, 0.0)  # a cold start
    assert e.predict(1, 1.0) == pytest.approx(1.0)
    assert e.predict(1, 10.0) < 0.01
    e.observe(1, 0.010, 20.0)  # fresh runs take over the median
    e.observe(1, 0.010, 20.0)
    assert e.predict(1, 20.0) == pytest.approx(0.010)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="window"):
        ServiceTimeEstimator(window=0)
    with pytest.raises(ValueError, match="half_life_s"):
        ServiceTimeEstimator(half_life_s=0.0)
    with pytest.raises(ValueError, match="quantile"):
        ServiceTimeEstimator(quantile=0.2)
    with pytest.raises(ValueError, match="max_margin"):
        ServiceTimeEstimator(max_margin=-1.0)


def test_record_batch_follows_triton_semantics() -> None:
    s = ModelStats()
    s.record_batch(rows=5, requests=2, input_ns=10, infer_ns=100, output_ns=1)
    s.record_batch(rows=5, requests=3, input_ns=20, infer_ns=200, output_ns=2)
    before_ms = time.time_ns() // 1_000_000
    s.record_batch(rows=1, requests=1, input_ns=1, infer_ns=1, output_ns=1)
    after_ms = time.time_ns() // 1_000_000
    assert s.execution_count == 3
    assert s.inference_count == 11
    assert s.batch_stats[5].compute_infer.count == 2
    assert s.batch_stats[5].compute_infer.ns == 300
    assert s.batch_stats[1].compute_input.count == 1
    # Per request: the whole batch's time, counted once per request.
    assert s.compute_infer.count == s.compute_input.count == s.compute_output.count == 6
    assert s.compute_infer.ns == 2 * 100 + 3 * 200 + 1
    assert before_ms <= s.last_inference_ms <= after_ms  # wall clock of the last batch, in ms


def test_request_level_counters() -> None:
    s = ModelStats()
    s.record_success(5)
    s.record_success(7)
    s.record_failure(3)
    s.record_queue(11)
    assert (s.success.count, s.success.ns) == (2, 12)
    assert (s.fail.count, s.fail.ns) == (1, 3)
    assert (s.queue.count, s.queue.ns) == (1, 11)
    assert s.cache_hit.count == s.cache_miss.count == 0
