"""The rollback verdict on what a version could help: a client's deadline no version could meet is
not held against the canary it was routed to, while one the stable version meets and the canary
refuses still is; and a p99 difference under the absolute floor (bucket noise of sub-millisecond
versions) rolls nothing back, while a really slow canary is still caught."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import cast

import numpy as np
import pytest

from batcher.dynamic import DynamicBatcher
from batcher.errors import DeadlineExceeded, Overloaded
from batcher.stats import LATENCY_BOUNDS_NS, ModelStats
from batcher.types import BatchingPolicy, Tensors
from server.models.rollback import Figures, RollbackMonitor, decide
from server.models.rollout import figures_of
from server.models.traffic import RollbackThresholds, parse_policy
from server.models.versions import ModelVersion
from tests.unit.test_rollout_policy import config, latency

T = RollbackThresholds(window_s=10, min_requests=50, error_margin=0.05, latency_margin=1.0)


def answered(ok: int, ms: float = 0.4) -> ModelStats:
    stats = ModelStats()
    for _ in range(ok):
        stats.record_success(int(ms * 1e6))
    return stats


def figures(stats: ModelStats) -> Figures:
    return figures_of(cast(ModelVersion, SimpleNamespace(stats=stats)))


def test_a_client_deadline_no_version_could_meet_is_not_held_against_the_canary() -> None:
    """One user sent 1 us timeouts; sticky, they all reached version 2: `missed_deadline=200
    p99<=inf`, and the healthy canary was rolled back."""
    stable, canary = answered(200), answered(200)
    for _ in range(20):  # past already, or shorter than the stable version's own p99 (<= 0.5 ms)
        canary.record_refusal(DeadlineExceeded("past"), False, left_ns=0)
        canary.record_refusal(DeadlineExceeded("cannot be met"), False, left_ns=200_000)
    assert decide(figures(stable), figures(canary), T) is None
    # Over windows too: the monitor's differences keep the refusals apart.
    monitor = RollbackMonitor(10, 0.0, {1: figures(stable), 2: figures(canary)})
    for _ in range(100):
        stable.record_success(400_000)
        canary.record_success(400_000)
        canary.record_refusal(DeadlineExceeded("past"), False, left_ns=0)
    report = monitor.close(
        10.0, {1: figures(stable), 2: figures(canary)}, stable=1, candidates=[2], thresholds=T
    )
    assert report.verdicts == {} and sum(report.figures[2].refused) == 100 and report.figures[2].missed == 0


def test_deadlines_the_stable_version_meets_and_the_canary_misses_still_roll_it_back() -> None:
    stable = figures(answered(200))
    too_slow = ModelStats()  # refused every caller's 20 ms deadline: its runs take longer
    for _ in range(100):
        too_slow.record_refusal(DeadlineExceeded("cannot be met"), False, left_ns=20_000_000)
    verdict = decide(stable, figures(too_slow), T)
    assert verdict is not None and "p99 latency <= inf" in verdict
    queued = answered(180)  # its own queue made them late: shed for the work ahead, expired, late
    for _ in range(10):
        queued.record_refusal(Overloaded(), False)
    queued.expired += 5
    queued.late += 5
    assert figures(queued).missed == 20
    assert decide(stable, figures(queued), T) is not None
    # A stable version too slow for them as well beats nothing: no p99 of its own to beat.
    assert decide(Figures(0, 0, (), 200), figures(too_slow), T) is None


async def test_the_batcher_records_the_time_a_refused_deadline_had_left() -> None:
    class Echo:
        async def run(self, inputs: Tensors) -> Tensors:
            return {"y": inputs["x"]}

    stats = ModelStats()
    batcher = DynamicBatcher([Echo()], BatchingPolicy(max_batch_size=8), stats)
    batcher.start()
    x = {"x": np.ones((1, 2), np.float32)}
    try:
        with pytest.raises(DeadlineExceeded):
            await batcher.submit(x, 1, deadline=0.0)  # long past on the monotonic clock
        batcher.estimator.observe(1, 10.0, time.monotonic())  # runs are known to take 10 s
        with pytest.raises(DeadlineExceeded, match="cannot be met"):
            await batcher.submit(x, 1, timeout_s=1.0)
    finally:
        await batcher.stop(drain=False, timeout_s=0.1)
    counts = stats.deadline_left_hist.counts
    assert counts[0] == 1 and counts[len(LATENCY_BOUNDS_NS) - 1] == 1 and sum(counts) == 2  # none; <= 1 s
    assert stats.shed == 2 and figures(stats).missed == 0


def test_a_p99_difference_under_the_floor_rolls_nothing_back() -> None:
    """Identical healthy versions, one window: `p99 latency <= 2 ms vs the stable version's <=
    0.5 ms` rolled 3 of 4 canaries back."""
    stable = Figures(200, 0, latency(0.4, 200))
    noisy = Figures(200, 0, latency(0.4, 190))
    noisy = Figures(200, 0, tuple(a + b for a, b in zip(noisy.latency, latency(1.5, 10), strict=True)))
    assert decide(stable, noisy, T) is None
    no_floor = RollbackThresholds(10, 50, 0.05, 1.0, latency_floor_s=0.0)
    verdict = decide(stable, noisy, no_floor)  # the floor is what spares it
    assert verdict is not None and "rollback_latency_floor_ms 0" in verdict
    slow = Figures(200, 0, latency(8, 200))  # 10x and more than the floor slower: caught
    verdict = decide(Figures(200, 0, latency(0.8, 200)), slow, T)
    assert verdict is not None and "p99 latency <= 10 ms" in verdict


def test_the_latency_floor_is_a_parameter() -> None:
    policy = parse_policy(config(rollback_latency_floor_ms="0.5"), "m", [1])
    assert policy is not None and policy.rollback is not None
    assert policy.rollback.latency_floor_s == pytest.approx(0.0005)
    default = parse_policy(config(rollback_window_s="5"), "m", [1])
    assert default is not None and default.rollback is not None
    assert default.rollback.latency_floor_s == pytest.approx(0.005)
