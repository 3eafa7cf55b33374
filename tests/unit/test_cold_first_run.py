"""An instance's first run is cold (session 60): onnxruntime allocates its session's arena and
calls its kernels for the first time there (the demo mlp's first run 0.8 ms, its steady runs 25 us).
A fresh server sent only 3 ms requests ran one, then refused every later one ("about 0.8 ms of
compute needed ... plus a 5.0 ms margin"): that run held the hop margin at its cap (its figure read
as an executor model's) and its CPU figure kept the next runs off the loop, and a refused request
never runs to correct it. Now, while a row's only run is a cold one, the margin is measured (the
run still bounds refusals: a slow model's first run is evidence too), and a bucket's first run that
a faster one replaces takes its CPU figure with it."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from batcher import BatchingPolicy, DynamicBatcher, ModelStats, Tensors
from batcher.estimate import ServiceTimeEstimator
from batcher.hop import CAP_S, FLOOR_S
from batcher.watchdog import Instance
from tests.support.batcher_fakes import Clock, Gated, OnPool

NOW = 100.0
LONG = 5.0  # an upper bound no healthy wait comes near
X = {"x": np.ones((1, 2), np.float32)}


def test_a_cold_run_alone_in_its_bucket_still_bounds_and_is_told() -> None:
    est = ServiceTimeEstimator()
    assert not est.cold_only(1)
    est.observe(1, 0.0008, NOW, cpu_s=0.0008, nbytes=8, cold=True)
    assert est.cold_only(1) and not est.cold_only(4)  # (4 rows: another bucket, none seen)
    assert est.predict_floor(1, NOW) == pytest.approx(0.0008)  # a slow model's first run is evidence
    assert est.predict(1, NOW) == pytest.approx(0.0008)
    assert not est.cheap(1, 0.0005, 8)  # its CPU, until a faster run replaces it
    est.observe(1, 0.0001, NOW, cpu_s=0.0001, nbytes=8)
    assert not est.cold_only(1)
    assert est.predict_floor(1, NOW) == pytest.approx(0.0001)  # the cold run left (slower, first)
    assert est.cheap(1, 0.0001, 8)  # the EWMA began again at the warm run
    warm_first = ServiceTimeEstimator()  # a warm run first, then another instance's cold one
    warm_first.observe(1, 0.0002, NOW, cpu_s=0.0002, nbytes=8)
    warm_first.observe(1, 0.0009, NOW, cpu_s=0.0009, nbytes=8, cold=True)
    assert not warm_first.cold_only(1)


def test_a_first_run_that_leaves_takes_its_cpu_with_it() -> None:
    # Its CPU had stayed in the figure inline runs go by (falling a fifth a run): a fresh mlp's
    # 0.8 ms kept its next runs in the executor, whose walls held the hop margin at its cap.
    est = ServiceTimeEstimator()
    est.observe(1, 0.0008, NOW, cpu_s=0.0008, nbytes=8)
    est.observe(1, 0.0003, NOW, cpu_s=0.0002, nbytes=8)
    assert est.cheap(1, 0.0002, 8)  # 0.2 ms, not 0.8 + (0.2 - 0.8) / 5 = 0.68 ms
    slower = ServiceTimeEstimator()  # a second run slower than the first: both stay
    slower.observe(1, 0.0002, NOW, cpu_s=0.0002, nbytes=8)
    slower.observe(1, 0.0008, NOW, cpu_s=0.0008, nbytes=8)
    assert not slower.cheap(1, 0.0002, 8)
    assert slower.cheap(1, 0.00033, 8)  # 0.2 + (0.8 - 0.2) / 5 = 0.32 ms


def test_while_a_rows_only_run_is_cold_the_margin_is_measured() -> None:
    clock, be = Clock(NOW), Counting()
    b = DynamicBatcher([be], BatchingPolicy(max_batch_size=8), ModelStats(), clock, inline_max_s=0.0003)
    try:
        assert b.hop.at(NOW) == CAP_S  # nothing seen: the cap
        b.estimator.observe(1, 0.0008, NOW, cpu_s=0.0008, nbytes=8, cold=True)
        assert b.hop.at(NOW) == FLOOR_S  # 0.8 ms + 1 ms fits a 3 ms deadline; with the cap it did not
        b.estimator.observe(1, 0.0005, NOW, cpu_s=0.0003, nbytes=8)  # then an executor's 0.5 ms
        assert b.hop.at(NOW) == CAP_S
        off = DynamicBatcher([be], BatchingPolicy(max_batch_size=8), ModelStats(), clock, inline_max_s=0.0)
        off.estimator.observe(1, 0.0008, NOW, cold=True)
        assert off.hop.at(NOW) == CAP_S  # no inline runs at all (a GPU's): the cap, cold or not
    finally:
        be.pool.shutdown()


class Counting(OnPool):
    """A RunsBlocking fake answering y = 2 * x on its pool."""

    def __init__(self) -> None:
        super().__init__("counting")

    def run_blocking(self, inputs: Tensors) -> Tensors:
        return {"y": inputs["x"] * 2}


def cold_marks(b: DynamicBatcher) -> list[bool]:
    """The `cold` flag of each run the batcher reports to its estimator from now on."""
    told: list[bool] = []
    observe = b.estimator.observe

    def spy(
        rows: int, seconds: float, now: float, cpu_s: float | None = None, nbytes: int = 0, cold: bool = False
    ) -> None:
        told.append(cold)
        observe(rows, seconds, now, cpu_s, nbytes, cold=cold)

    b.estimator.observe = spy  # type: ignore[method-assign]
    return told


async def test_each_instances_first_batch_is_told_cold_to_the_estimator() -> None:
    clock, be = Clock(NOW), Counting()
    b = DynamicBatcher([be], BatchingPolicy(max_batch_size=8), ModelStats(), clock, inline_max_s=0.0)
    told = cold_marks(b)
    b.start()
    try:
        for _ in range(3):
            await asyncio.wait_for(b.submit(X, 1), LONG)
        assert told == [True, False, False]
    finally:
        await b.stop(drain=False, timeout_s=0.1)
        be.pool.shutdown()


async def test_a_replaced_backend_runs_cold_again() -> None:
    instance = Instance(0, Gated(gate_open=True))
    instance.ran = True
    instance.swap(Gated(gate_open=True))
    assert not instance.ran


class FailsFirst(OnPool):
    """A RunsBlocking fake whose first run fails; y = 2 * x after."""

    def __init__(self) -> None:
        super().__init__("fails-first")
        self.calls = 0

    def run_blocking(self, inputs: Tensors) -> Tensors:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("the first run fails")
        return {"y": inputs["x"] * 2}


async def test_the_cold_mark_goes_with_the_first_run_that_answers() -> None:
    # The mark had been taken when a batch was boarded: one dropped unrun (waiting for its thread)
    # left the real first run read as warm, and its 0.7 ms refused the 3 ms requests again (a
    # tester, session 60). A run that fails records nothing, so the next one carries the mark.
    clock, be = Clock(NOW), FailsFirst()
    b = DynamicBatcher([be], BatchingPolicy(max_batch_size=8), ModelStats(), clock, inline_max_s=0.0)
    told = cold_marks(b)
    b.start()
    try:
        with pytest.raises(Exception, match="the first run fails"):
            await asyncio.wait_for(b.submit(X, 1), LONG)
        for _ in range(2):
            await asyncio.wait_for(b.submit(X, 1), LONG)
        assert be.calls == 3 and told == [True, False]
    finally:
        await b.stop(drain=False, timeout_s=0.1)
        be.pool.shutdown()
