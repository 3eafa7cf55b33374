"""batcher/fast_path.py: the survivors of the whole-scope mutation run of 2026-12-05 (tests/MUTANTS.md,
forty-eighth session). A FastPath is built directly on a RunsBlocking backend and a fake clock; where
a run's duration matters, the module's `time` is a fake whose perf_counter_ns gives set values in
turn, so each run takes exactly the nanoseconds the test says."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pytest

from batcher import fast_path as fast_path_module
from batcher.admission import Admission
from batcher.budget import input_bytes
from batcher.estimate import ServiceTimeEstimator
from batcher.fast_path import FastPath
from batcher.flights import Flights
from batcher.forecast import WaitForecast
from batcher.queue import RequestQueue
from batcher.run_count import RunCount
from batcher.stats import ModelStats
from batcher.types import BatchingPolicy, Tensors
from tests.unit.test_mutants_dynamic import Blocking, Clock

POLICY = BatchingPolicy(max_batch_size=8)


class Ticks:
    """batcher.fast_path's `time`: perf_counter_ns gives `ns` in turn (a run's start, then its end)."""

    def __init__(self, *ns: int) -> None:
        self.ns = list(ns)

    def perf_counter_ns(self) -> int:
        return self.ns.pop(0)


def x(rows: int, value: float = 1.0) -> Tensors:
    return {"x": np.full((rows, 2), value, np.float32)}


def fast(
    clock: Clock,
    backend: Blocking | None = None,
    stats: ModelStats | None = None,
    estimator: ServiceTimeEstimator | None = None,
    sizes: tuple[int, ...] = (1,),
    **options: Any,
) -> FastPath:
    """A FastPath for an idle model whose runs of `sizes` rows are known to cost no CPU (for inputs
    up to 1 MiB): requests of those rows take it. `options`: run_timeout_s and name, left out for
    their defaults."""
    estimator = estimator or ServiceTimeEstimator()
    for rows in sizes:
        estimator.observe(rows, 0.0, clock.now, cpu_s=0.0, nbytes=1 << 20)
    queue = RequestQueue(POLICY, clock)
    return FastPath(
        backend or Blocking(),
        1.0,
        POLICY,
        stats or ModelStats(),
        clock,
        estimator,
        WaitForecast(estimator, queue, POLICY, 1, clock),
        queue,
        Flights(lambda: 0),
        RunCount(),
        **options,
    )


def admission(clock: Clock, rows: int = 1) -> Admission:
    return Admission.settle(POLICY, rows, now=clock.now)


# -- overran: when an inline run trips inline runs off --------------------------------------------


def test_without_a_run_timeout_no_inline_run_however_long_trips_inline_runs_off() -> None:
    """run_timeout_s defaults to 0 (no limit): a default of 1 s would turn inline runs off after
    any run past a second."""
    fp = fast(Clock())
    fp.overran(1000.0)
    assert fp.runs_inline(1, 8)


def test_an_inline_run_of_exactly_run_timeout_s_is_not_past_it() -> None:
    """Past the limit trips; at it does not (`<`, not `<=`)."""
    fp = fast(Clock(), run_timeout_s=1.0)
    fp.overran(1.0)
    assert fp.runs_inline(1, 8)
    fp.overran(math.nextafter(1.0, 2.0))
    assert not fp.runs_inline(1, 8)


def test_the_overrun_warning_names_the_default_model_name_the_seconds_and_the_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Word for word, with FastPath's default name "batcher" (the name, or its default, lost or
    changed would show here)."""
    fp = fast(Clock(), run_timeout_s=2.0)
    with caplog.at_level(logging.WARNING, logger="batcher.fast_path"):
        fp.overran(2.5)
    assert [r.getMessage() for r in caplog.records] == [
        "batcher: an inline run took 2.500 s, past run_timeout_s (2 s): none runs inline any more"
    ]
    assert not fp.runs_inline(1, 8)


def test_a_fast_run_one_nanosecond_past_run_timeout_s_trips_inline_runs_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The run's seconds are its nanoseconds / 1e9: 1,000,000,001 ns is past a 1 s limit (divided by
    1,000,000,001 it would be exactly 1 s, not past it)."""
    clock, be = Clock(), Blocking()
    fp = fast(clock, be, run_timeout_s=1.0)
    monkeypatch.setattr(fast_path_module, "time", Ticks(1_000, 1_000 + 1_000_000_001))
    out = fp.run(x(1, 3.0), admission(clock))
    assert out is not None and out["y"].tolist() == [[6.0, 6.0]]  # answered: the run itself ended well
    assert not fp.runs_inline(1, 8)
    assert fp.run(x(1), admission(clock)) is None  # the fast path is off too
    assert be.batches == [[3.0]]


# -- run: the books a fast run keeps ----------------------------------------------------------------


def test_a_fast_run_counts_its_run_time_alone_no_gather_or_scatter_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run of 250,000 ns that starts at 5,000,000: the run's statistics and the request's compute
    times are (0, 250000, 0), and the request's `computed` hears the same (not the start plus the
    end, not a gather or scatter of 1 ns)."""
    clock, stats = Clock(), ModelStats()
    fp = fast(clock, stats=stats)
    monkeypatch.setattr(fast_path_module, "time", Ticks(5_000_000, 5_250_000))
    heard: list[tuple[int, int, int]] = []
    a = admission(clock)._replace(computed=heard.append)
    assert fp.run(x(1), a) is not None
    per_size = stats.batch_stats[1]
    assert [d.ns for d in (per_size.compute_input, per_size.compute_infer, per_size.compute_output)] == [
        0,
        250_000,
        0,
    ]
    assert [(d.count, d.ns) for d in (stats.compute_input, stats.compute_infer, stats.compute_output)] == [
        (1, 0),
        (1, 250_000),
        (1, 0),
    ]
    assert heard == [(0, 250_000, 0)]
    assert stats.run_cpu_s == 250_000 / 1e9


def test_a_fast_run_of_a_shadow_copy_counts_its_rows_as_computed_and_nothing_of_a_request() -> None:
    """A copy (`counted` False) of 2 rows: its rows in inference_count (count_copy), its run in the
    run's statistics, and no queue time or per-request compute."""
    clock, stats = Clock(), ModelStats()
    fp = fast(clock, stats=stats, sizes=(2,))
    out = fp.run(x(2, 4.0), admission(clock, 2)._replace(counted=False))
    assert out is not None and out["y"].tolist() == [[8.0, 8.0]] * 2
    assert stats.inference_count == 2 and stats.execution_count == 1 and sorted(stats.batch_stats) == [2]
    assert stats.compute_infer.count == 0 and stats.queue_hist.count == 0 and stats.queue.count == 0


def test_a_fast_run_teaches_the_estimator_its_input_bytes_so_the_next_such_request_runs_inline_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a window of one run, the estimator calls a size cheap only for inputs as large as its
    last run's: a fast run observed without its bytes (as 0) would send the next request of the same
    bytes off the fast path."""
    clock, be = Clock(), Blocking()
    estimator = ServiceTimeEstimator(window=1)
    fp = fast(clock, be, estimator=estimator)
    nbytes = input_bytes(x(1))
    estimator.observe(1, 0.0, clock.now, cpu_s=0.0, nbytes=nbytes)  # the last run: exactly these bytes
    monkeypatch.setattr(fast_path_module, "time", Ticks(0, 1_000, 2_000, 3_000))
    assert fp.run(x(1, 1.0), admission(clock)) is not None
    assert estimator.cheap(1, 1.0, nbytes)
    assert fp.run(x(1, 2.0), admission(clock)) is not None
    assert be.batches == [[1.0], [2.0]]
