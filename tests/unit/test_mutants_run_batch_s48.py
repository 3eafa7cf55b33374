"""batcher/run_batch.py: the survivors of the whole-scope mutation run of 2026-12-05 (tests/MUTANTS.md,
forty-eighth session). A BatchRunner is built directly (as in test_mutants_session18.py and
test_mutants_run_batch_halves.py) on a fake clock and a fake or scripted backend, with its batch
handed to it as formation would (a Flight taken from the Flights)."""

from __future__ import annotations

import functools
import logging
import threading

import numpy as np
import pytest

from batcher import run_batch as run_batch_module
from batcher.errors import DeadlineExceeded, OutputRowsWrong
from batcher.estimate import ServiceTimeEstimator
from batcher.flights import Flights
from batcher.forecast import WaitForecast
from batcher.log_ration import Ration
from batcher.queue import RequestQueue
from batcher.run_batch import BatchRunner
from batcher.stats import ModelStats
from batcher.types import BatchingPolicy
from batcher.watchdog import ExpiredUnrun, Instance, Watchdog
from tests.unit.test_batch_io import request
from tests.unit.test_batcher_dynamic import Refused
from tests.unit.test_mutants_dynamic import Blocking, Clock
from tests.unit.test_mutants_run_batch_halves import Script, batch_of, error_of, refusing
from tests.unit.test_mutants_session18 import Echo, runner, take, x

HALVES = "m: a batch of %d requests refused for its inputs; running its halves again"


# -- a batch refused for its inputs: its log line rationed -----------------------------------------


async def test_the_halving_line_is_rationed_per_runner_one_in_ten_seconds_the_rest_counted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A client's refused inputs are logged once in 10 s (the runner's own Ration, here on a fake
    clock): the second refused batch at the same time is held back and counted in the third's line,
    10 s later. Without the ration (None) every refused batch would log."""
    ration_clock = Clock(0.0)
    monkeypatch.setattr(run_batch_module, "Ration", functools.partial(Ration, clock=ration_clock))
    clock, stats = Clock(10.0), ModelStats()
    run, flights = runner(clock, stats)
    with caplog.at_level(logging.WARNING, logger="batcher"):
        for at in (0.0, 5.0, 10.0):
            ration_clock.now = at
            batch = batch_of([1, 1])
            await run.run(Instance(0, Script(refusing(2))), take(flights, batch))
            assert type(error_of(batch[1])) is Refused and batch[0].handle.future.result()["y"].shape == (
                1,
                2,
            )
    assert [r.getMessage() for r in caplog.records] == [
        HALVES % 2,
        HALVES % 2 + " (1 more like it since the last such line, not logged)",
    ]
    assert flights.count == 0


# -- a batch refused or failed: its flight lands before its answers ------------------------------


async def test_a_lone_request_refused_for_its_inputs_gets_the_refusal_and_its_flight_lands() -> None:
    """Not halved (one request): the refusal is its answer, and its batch no longer counts as in
    flight (else the model never looks idle to the fast path and `stop()` until the task's end)."""
    clock, stats = Clock(10.0), ModelStats()
    run, flights = runner(clock, stats)
    batch = batch_of([2])
    await run.run(Instance(0, Script(refusing(1))), take(flights, batch))
    err = error_of(batch[0])
    assert type(err) is Refused and str(err) == "1 refused"
    assert flights.count == 0


async def test_a_run_that_fails_otherwise_fails_its_batch_and_its_flight_lands() -> None:
    clock, stats = Clock(10.0), ModelStats()
    run, flights = runner(clock, stats)
    batch = batch_of([1, 2])

    def fail(ids: list[int]) -> None:
        raise RuntimeError("the backend broke")

    await run.run(Instance(0, Script(fail)), take(flights, batch))
    for p in batch:
        err = error_of(p)
        assert type(err) is RuntimeError and str(err) == "the backend broke"
    assert flights.count == 0 and stats.execution_count == 0


async def test_outputs_without_the_batchs_rows_fail_the_run_with_one_warning_for_its_operator(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The model's fault, not the requests': logged word for word (name, requests, the error)."""
    clock, stats = Clock(10.0), ModelStats()
    run, flights = runner(clock, stats)
    batch = [request(x(2), 2, 1), request(x(1), 1, 2)]
    be = Echo({"y": np.zeros((1, 2), np.float32)})  # 1 row for a batch of 3
    with caplog.at_level(logging.WARNING, logger="batcher"):
        await run.run(Instance(0, be), take(flights, batch))
    why = "backend returned output 'y' with shape (1, 2) for a batch of 3 rows"
    for p in batch:
        err = error_of(p)
        assert type(err) is OutputRowsWrong and str(err) == why
    assert [r.getMessage() for r in caplog.records] == [f"m: a run of 2 requests failed: {why}"]
    assert flights.count == 0


# -- a run never started (ExpiredUnrun) ------------------------------------------------------------


async def test_a_run_expired_unrun_counts_each_request_once_a_caller_gone_at_its_deadline_included() -> None:
    """Three requests boarded at 10.0; their executor thread takes the run at 10.6, past every
    deadline, after request 2's caller went (at its deadline 10.5: an expiry too). On top of 3
    expiries counted before: 6 (each added once, none replacing or taking from the count); the
    other two answered DEADLINE_EXCEEDED."""
    clock, stats = Clock(10.0), ModelStats()
    stats.expired = 3
    run, flights = runner(clock, stats)
    batch = batch_of([1, 1, 1], hard={1: 10.2, 2: 10.5, 3: 10.5})

    def unrun(ids: list[int]) -> None:
        clock.now = 10.6
        batch[1].handle.future.cancel()
        raise ExpiredUnrun

    await run.run(Instance(0, Script(unrun)), take(flights, batch))
    for p in (batch[0], batch[2]):
        err = error_of(p)
        assert type(err) is DeadlineExceeded
        assert str(err) == "deadline exceeded while its batch waited for a thread of its instance"
    assert batch[1].handle.future.cancelled()
    assert (stats.expired, stats.late, stats.execution_count) == (6, 0, 0)
    assert flights.count == 0


# -- a run that ended well: its record -------------------------------------------------------------


async def test_a_traced_requests_run_record_has_the_whole_runs_rows_and_the_statistics_its_times() -> None:
    """A traced request of 2 rows batched before one of 3: its run record names the run's 5 rows
    (not the first request's end offset, 2), and the run's statistics for 5 rows hold the gather,
    run and scatter times the record's timestamps span (differences, not sums)."""
    clock, stats = Clock(10.0), ModelStats()
    run, flights = runner(clock, stats)
    traced = request(x(2), 2, 1, trace=True)
    batch = [traced, request(x(3), 3, 2)]
    await run.run(Instance(0, Echo()), take(flights, batch))
    assert traced.handle.trace is not None and traced.handle.trace.run is not None
    record = traced.handle.trace.run
    assert (record.rows, record.requests) == (5, 2)
    assert sorted(stats.batch_stats) == [5] and stats.inference_count == 5
    per_size = stats.batch_stats[5]
    assert (per_size.compute_input.count, per_size.compute_input.ns) == (1, record.run_ns - record.gather_ns)
    assert (per_size.compute_infer.count, per_size.compute_infer.ns) == (1, record.scatter_ns - record.run_ns)
    assert (per_size.compute_output.count, per_size.compute_output.ns) == (
        1,
        record.end_ns - record.scatter_ns,
    )


# -- inline runs and `overran` ---------------------------------------------------------------------


def inline_runner(
    clock: Clock, stats: ModelStats, inline: bool, heard: list[float | None]
) -> tuple[BatchRunner, Flights]:
    """A runner whose runs go inline (or to the executor) by `inline`, telling `heard` what it
    passes to `overran`."""
    policy = BatchingPolicy(max_batch_size=8)
    estimator = ServiceTimeEstimator()
    queue = RequestQueue(policy, clock)
    flights = Flights(lambda: 0)
    made = BatchRunner(
        policy,
        stats,
        clock,
        estimator,
        WaitForecast(estimator, queue, policy, 1, clock),
        Watchdog(0.0, None, "m"),
        flights,
        lambda rows, nbytes: inline,
        lambda: None,
        name="m",
        overran=heard.append,
    )
    return made, flights


async def test_an_inline_run_tells_overran_the_seconds_it_took() -> None:
    """Inline on the loop thread, no watchdog can cut a run: its wall time (the CPU time the
    statistics get) goes to `overran`, which trips inline runs off past run_timeout_s."""
    clock, stats = Clock(10.0), ModelStats()
    heard: list[float | None] = []
    run, flights = inline_runner(clock, stats, True, heard)
    be = Blocking()
    p = request(x(2, 3.0), 2, 1)
    await run.run(Instance(0, be), take(flights, [p]))
    assert p.handle.future.result()["y"].tolist() == [[6.0, 6.0]] * 2
    assert be.threads == [threading.current_thread().name]  # it ran inline
    assert heard == [stats.run_cpu_s] and isinstance(heard[0], float)


async def test_a_run_in_the_executor_does_not_tell_overran_its_cpu_seconds() -> None:
    """A run through the executor is the watchdog's to time: its CPU seconds (measured there, not
    None) are not an inline run's wall time, and must not trip inline runs off."""
    clock, stats = Clock(10.0), ModelStats()
    heard: list[float | None] = []
    run, flights = inline_runner(clock, stats, False, heard)
    be = Blocking()
    try:
        p = request(x(1, 2.0), 1, 1)
        await run.run(Instance(0, be), take(flights, [p]))
        assert p.handle.future.result()["y"].tolist() == [[4.0, 4.0]]
        assert be.threads != [threading.current_thread().name]  # it ran on the executor's thread
        assert heard == [] and stats.execution_count == 1
    finally:
        be.pool.shutdown()
