"""A request of a size not run yet is refused or dropped unrun only on what runs prove.

Runs seen prove a lower bound for a larger size (more rows never run faster): the nearest smaller
size seen (`predict_seen`). The by-rows extrapolation (`predict`) is a guess, cautious for sizing a
batch; refusing on it never let the size run, so the guess was never corrected (8 rows with a
500 ms deadline after one 1-row run of 100 ms: "about 800 ms of compute needed", every time).
Fake clock: no deadline here passes in real time.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from batcher import BatchingPolicy, DeadlineExceeded
from batcher.estimate import ServiceTimeEstimator
from batcher.form import Pending, form_batch
from tests.support.batcher_fakes import Clock, Gated, started_batchers, turns_until
from tests.support.batcher_fakes import MakeBatcher as Make

LONG = 5.0  # an upper bound no healthy run comes near


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    async with started_batchers() as made:
        yield made


def x(rows: int) -> dict[str, np.ndarray[Any, Any]]:
    return {"x": np.ones((rows, 2), np.float32)}


# -- the estimator -----------------------------------------------------------------------------------


def test_an_unseen_size_is_bounded_below_by_the_nearest_smaller_size_seen() -> None:
    est = ServiceTimeEstimator()
    est.observe(1, 0.1, 0.0)
    assert est.predict_seen(8, 0.0) == pytest.approx(0.1)  # proven: at least one 1-row run
    assert est.predict(8, 0.0) == pytest.approx(0.8)  # guessed, for sizing: by rows


def fed(seconds: list[float]) -> ServiceTimeEstimator:
    est = ServiceTimeEstimator()
    for s in seconds:
        est.observe(1, s, 0.0)
    return est


def test_a_cold_first_run_leaves_its_bucket_when_a_faster_second_run_arrives() -> None:
    # Kept, the cold 1.0 s held the margin at its cap (1.5 x 0.1) for the next several runs.
    assert fed([1.0]).predict(1, 0.0) == pytest.approx(1.0)  # a lone sample is its own median
    assert fed([1.0, 0.1]).predict(1, 0.0) == pytest.approx(0.1)
    assert fed([1.0, 0.1, 0.1, 0.1]).predict(1, 0.0) == pytest.approx(0.1)


def test_only_the_first_run_is_dropped_and_only_when_slower() -> None:
    assert fed([0.1, 1.0]).predict(1, 0.0) == pytest.approx(0.15)  # first faster: kept, margin capped
    # The second run (0.5 s) stays although the third is faster: one-time costs are the first's.
    assert fed([1.0, 0.5, 0.1]).predict(1, 0.0) == pytest.approx(0.15)


# -- admission -------------------------------------------------------------------------------------


async def test_eight_rows_with_500_ms_after_one_1_row_run_of_100_ms_is_run(make: Make) -> None:
    clock, backend = Clock(), Gated(gate_open=True)
    b = make(backend, clock)
    b.estimator.observe(1, 0.1, clock.now)
    # Refused before: "about 800.0 ms of compute needed, 500.0 ms left".
    out = await asyncio.wait_for(b.submit(x(8), 8, deadline=clock.now + 0.5), LONG)
    np.testing.assert_array_equal(out["y"], x(8)["x"] * 2)
    assert backend.runs == [8]


async def test_a_deadline_below_the_proven_lower_bound_is_still_refused_at_once(make: Make) -> None:
    clock, backend = Clock(), Gated(gate_open=True)
    b = make(backend, clock)
    b.estimator.observe(1, 0.1, clock.now)
    with pytest.raises(DeadlineExceeded, match=r"about 100\.0 ms of compute needed .*, 50\.0 ms left"):
        await asyncio.wait_for(b.submit(x(8), 8, deadline=clock.now + 0.05), LONG)
    assert backend.runs == []


# -- formation -------------------------------------------------------------------------------------


async def test_formation_does_not_drop_a_queued_request_on_the_by_rows_guess(make: Make) -> None:
    clock, backend = Clock(), Gated(gate_open=True)
    b = make(backend, clock, max_batch_size=16)
    backend.gate.clear()
    running = asyncio.ensure_future(b.submit(x(16), 16))  # a larger size: no bound for 8 rows
    await asyncio.wait_for(backend.started.wait(), LONG)
    # Admitted while nothing was known; a 1-row run of 6 s is seen while it waits. (Seconds, not
    # tenths: its timer runs on real time, due 30 - 6 s on, never before the run ends however slow
    # the machine; with 0.5 s and 100 ms a stall of 0.4 s had failed it.)
    queued = asyncio.ensure_future(b.submit(x(8), 8, deadline=clock.now + 30.0))
    await turns_until(lambda: b.queued_requests == 1)
    b.estimator.observe(1, 6.0, clock.now)
    backend.gate.set()
    await asyncio.wait_for(running, LONG)
    out = await asyncio.wait_for(queued, LONG)  # dropped before: "about 48 s" by rows
    np.testing.assert_array_equal(out["y"], x(8)["x"] * 2)
    assert backend.runs == [16, 8]


def pending(seq: int, rows: int, hard: float | None) -> Pending[int]:
    return Pending(inputs=x(rows), rows=rows, priority=1, arrival=0.0, seq=seq, handle=seq, hard=hard)


def formed(queue: list[Pending[int]], est: ServiceTimeEstimator) -> tuple[list[int], list[int]]:
    predict = functools.partial(est.predict, now=0.0)
    floor = functools.partial(est.predict_seen, now=0.0)
    f = form_batch(queue, 0.0, BatchingPolicy(max_batch_size=8), predict, floor_s=floor)
    return [p.seq for p in f.batch], [p.seq for p in f.expired]


def test_formation_drops_only_below_the_proven_lower_bound() -> None:
    est = ServiceTimeEstimator()
    est.observe(1, 0.1, 0.0)
    assert formed([pending(0, 8, hard=0.5)], est) == ([0], [])  # guessed 0.8 s, proven 0.1 s
    assert formed([pending(0, 8, hard=0.05)], est) == ([], [0])  # not even the proven 0.1 s


def test_formation_still_sizes_batches_on_the_cautious_estimate() -> None:
    # Two 4-row requests with 500 ms: 8 rows are guessed 0.8 s, so they run one at a time (the
    # lower bound would have joined them into a batch that may finish late).
    est = ServiceTimeEstimator()
    est.observe(1, 0.1, 0.0)
    assert formed([pending(0, 4, hard=0.5), pending(1, 4, hard=0.5)], est) == ([0], [])
