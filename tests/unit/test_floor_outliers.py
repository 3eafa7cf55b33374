"""A lone slow run of a small size does not make larger requests "cannot be met", and the refusal
says exactly what its figure is.

The tester's case (model `hang`: 100 ms a run, the third run hung 1 s first): runs of 1 row took
105/106 ms, one 2-row run 1103 ms; then with 600 ms deadlines 2, 4 and 8-row requests were refused
"about 1077.2 ms of compute needed (the fastest recent run of 4 rows or fewer)" for ~4.5 s, while a
1-row request ran in 103 ms. The floor took every smaller bucket's fastest run, one run or many.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from batcher import BatchingPolicy, DeadlineExceeded, DynamicBatcher, ModelStats, Tensors
from batcher.estimate import ServiceTimeEstimator

NOW = 1000.0
BOUND_RUNS = 3  # a bucket's fastest bounds larger sizes from its third run on (estimate.BOUND_RUNS)
LONG = 5.0


def hang_model(est: ServiceTimeEstimator) -> None:
    est.observe(1, 0.105, NOW)
    est.observe(1, 0.106, NOW)
    est.observe(2, 1.103, NOW)  # hung


def test_a_lone_hung_run_does_not_bound_larger_sizes() -> None:
    est = ServiceTimeEstimator()
    hang_model(est)
    for rows in (2, 3, 4, 8):
        assert est.predict_floor(rows, NOW) == pytest.approx(0.105)
        assert est.floor_basis(rows, NOW) == f"the fastest recent run of {rows} rows or fewer"


def test_a_bucket_with_several_runs_bounds_larger_sizes_and_says_so() -> None:
    est = ServiceTimeEstimator()
    hang_model(est)
    for seconds in (0.300, 0.250, 0.280):  # the hung first run leaves at the faster second
        est.observe(2, seconds, NOW)
    assert est.predict_floor(4, NOW) == pytest.approx(0.250)  # the fastest of the 2-row runs
    assert est.floor_basis(4, NOW) == "the fastest of 3 recent runs of 2 rows"
    est.observe(3, 0.400, NOW)  # one 3-row run: bounds nothing yet, the 2-row runs still do
    assert est.predict_floor(4, NOW) == pytest.approx(0.250)


def test_the_own_buckets_lone_slow_run_does_not_bound_it_either() -> None:
    est = ServiceTimeEstimator()
    est.observe(1, 0.100, NOW)
    est.observe(3, 0.900, NOW)  # a hung 3-row run
    assert est.predict_floor(4, NOW) == pytest.approx(0.100)
    for _ in range(BOUND_RUNS):
        est.observe(3, 0.300, NOW)
    assert est.predict_floor(4, NOW) == pytest.approx(0.300)
    assert est.floor_basis(4, NOW) == "the fastest of 3 recent runs of 3 rows"  # the hung one left


class Instant:
    """A backend answering at once with its input (the identity)."""

    async def run(self, inputs: Tensors) -> Tensors:
        return {"y": inputs["x"]}


async def test_after_a_hung_two_row_run_a_four_row_request_with_600_ms_is_served() -> None:
    clock = [NOW]
    b = DynamicBatcher([Instant()], BatchingPolicy(max_batch_size=8), ModelStats(), lambda: clock[0])
    b.start()
    try:
        hang_model(b.estimator)
        x = {"x": np.ones((4, 1), np.float32)}
        out = await asyncio.wait_for(b.submit(x, 4, deadline=NOW + 0.6), LONG)
        assert out["y"].shape == (4, 1)
        # With runs that prove it, the refusal names the figure it rests on.
        for _ in range(BOUND_RUNS):
            b.estimator.observe(8, 0.700, NOW)
        with pytest.raises(DeadlineExceeded) as refused:
            await b.submit({"x": np.ones((8, 1), np.float32)}, 8, deadline=NOW + 0.6)
        assert str(refused.value) == (
            "deadline cannot be met: about 700.0 ms of compute needed (the fastest of 3 recent runs of "
            "8 rows) plus a 5.0 ms margin, 600.0 ms left"  # its runs off the event loop
        )
    finally:
        await b.stop()
