"""What /metrics adds to ModelStats (fixed-bucket histograms, deadline outcomes, refusals, failure
reasons), the dispatch reason formation gives each batch, and the batcher counting them."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from batcher import BatchingPolicy, DynamicBatcher, ModelStats, Tensors
from batcher.budget import ByteBudget
from batcher.errors import BatcherStopped, DeadlineExceeded, Overloaded, QueueFull, RunTimedOut, TooManyRows
from batcher.form import Pending, alone_reason, form_batch, runs_alone_now
from batcher.stats import DISPATCH_REASONS, LATENCY_BOUNDS_NS, Histogram
from server.errors import InvalidRequest, ShuttingDown
from server.observability.metrics_reasons import failure_reason, record_failed

# -- ModelStats ----------------------------------------------------------------------------------


def test_histogram_buckets_are_inclusive_upper_bounds() -> None:
    h = Histogram((10, 20))
    for value in (0, 10, 11, 20, 21, 10**9):
        h.observe(value)
    assert h.counts == [2, 2, 2]  # <= 10, (10, 20], above every bound
    assert h.count == 6 and h.total == 0 + 10 + 11 + 20 + 21 + 10**9


def test_latency_buckets_span_50_us_to_1_s() -> None:
    assert LATENCY_BOUNDS_NS[0] == 50_000 and LATENCY_BOUNDS_NS[-1] == 1_000_000_000
    assert list(LATENCY_BOUNDS_NS) == sorted(set(LATENCY_BOUNDS_NS))


def test_requests_runs_and_queue_waits_land_in_their_histograms() -> None:
    s = ModelStats()
    s.record_success(400_000)
    s.record_queue(60_000, slack_ns=2_000_000)
    s.record_queue(0)  # no deadline: no slack
    s.record_batch(rows=3, requests=2, input_ns=1, infer_ns=90_000, output_ns=1)
    assert (s.request_hist.count, s.request_hist.total) == (1, 400_000)
    assert s.request_hist.counts[LATENCY_BOUNDS_NS.index(500_000)] == 1
    assert s.queue_hist.count == 2 and s.queue_hist.counts[0] == 1
    assert s.slack_hist.count == 1 and s.slack_hist.total == 2_000_000
    assert s.infer_hist.count == 1 and s.infer_hist.counts[LATENCY_BOUNDS_NS.index(100_000)] == 1
    assert s.batch_hist.counts == [0, 0, 1, *[0] * 9]  # 3 rows: in the (2, 4] bucket


def test_refusals_count_rejections_and_sheds() -> None:
    s = ModelStats()
    s.record_refusal(Overloaded(), queue_full=False)
    s.record_refusal(DeadlineExceeded(), queue_full=False)
    s.record_refusal(QueueFull(), queue_full=True)
    s.record_refusal(QueueFull(), queue_full=False)  # the queue had room: a byte budget refused it
    s.record_refusal(BatcherStopped(), queue_full=False)  # not an admission refusal of ours
    assert {k: v for k, v in s.rejections.items() if v} == {
        "overloaded": 1,
        "deadline": 1,
        "queue_full": 1,
        "queued_bytes": 1,
    }
    assert s.shed == 2


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (QueueFull(), "REJECTED"),
        (Overloaded(), "REJECTED"),
        (DeadlineExceeded(), "REJECTED"),
        (RunTimedOut(), "BACKEND"),
        (RuntimeError("the backend's own"), "BACKEND"),
        (InvalidRequest("x"), "OTHER"),
        (TooManyRows(), "OTHER"),
        (BatcherStopped(), "OTHER"),
        (ShuttingDown("x"), "OTHER"),
    ],
)
def test_failure_reasons_are_tritons(exc: Exception, reason: str) -> None:
    assert failure_reason(exc) == reason
    s = ModelStats()
    record_failed(s, 5, exc)
    assert s.failures[reason] == 1 and (s.fail.count, s.fail.ns) == (1, 5)


def test_invalid_and_stopped_requests_are_rejections_cancellations_are_not_failures() -> None:
    s = ModelStats()
    record_failed(s, 1, InvalidRequest("x"))
    record_failed(s, 1, TooManyRows())
    record_failed(s, 1, BatcherStopped())
    s.record_canceled()
    assert s.rejections["invalid"] == 2 and s.rejections["unavailable"] == 1
    assert s.failures["CANCELED"] == 1 and s.fail.count == 3


# -- dispatch reasons ------------------------------------------------------------------------------


def req(
    seq: int, rows: int = 1, arrival: float = 0.0, hard: float | None = None, width: int = 3
) -> Pending[str]:
    inputs = {"x": np.zeros((rows, width), np.float32)}
    return Pending(
        inputs=inputs, rows=rows, priority=1, arrival=arrival, seq=seq, handle=f"r{seq}", hard=hard
    )


def reason(queue: list[Pending[str]], now: float = 0.0, tenth: bool = False, **policy: Any) -> str | None:
    def predict(rows: int) -> float:
        return rows / 10 if tenth else 0.0

    f = form_batch(queue, now, BatchingPolicy(**{"max_batch_size": 8, **policy}), predict)
    assert (f.reason is None) == (not f.batch)
    return f.reason


DELAY: dict[str, Any] = {"max_queue_delay_s": 10.0, "preferred_batch_sizes": (4,)}


def test_each_dispatch_reason() -> None:
    assert reason([req(i) for i in range(8)], max_queue_delay_s=10.0) == "full"
    assert reason([req(0, 2), req(1, 2), req(2)], max_batch_size=4, max_queue_delay_s=10.0) == "full"
    assert reason([req(0), req(1, width=5)]) == "full"  # different widths cannot join: the walk stopped
    assert reason([req(i) for i in range(4)], **DELAY) == "preferred"
    assert reason([req(i) for i in range(6)], **DELAY) == "preferred"  # cut at the mark
    assert reason([req(0)], now=10.0, **DELAY) == "delay_expired"
    assert reason([req(0)], now=9.0, **DELAY) is None  # waits
    assert reason([req(0)]) == "idle"
    assert reason([req(0)], idle_dispatch=True, **DELAY) == "idle"
    # Waiting for a batch of 4 (0.4 s) would miss its deadline at 0.5 s: it goes now.
    assert reason([req(0, hard=0.5)], now=0.2, tenth=True, **DELAY) == "deadline"
    # r1 joining (0.2 s) would miss r0's deadline at 0.15: the walk stops there.
    assert reason([req(0, hard=0.15), req(1)], tenth=True) == "deadline"
    assert reason([req(0), req(1)], max_batch_size=0) == "full"


POLICIES = [
    BatchingPolicy(
        max_batch_size=mbs, preferred_batch_sizes=pref, max_queue_delay_s=delay, idle_dispatch=idle
    )
    for mbs in (0, 1, 4, 8)
    for pref in ((), (2,), (2, 6), (4, 8))
    for delay in (0.0, 10.0)
    for idle in (False, True)
]


@pytest.mark.parametrize("policy", POLICIES, ids=repr)
def test_alone_reason_agrees_with_form_batch(policy: BatchingPolicy) -> None:
    for rows in range(1, max(policy.max_batch_size, 1) + 1):
        if runs_alone_now(rows, policy):
            f = form_batch([req(0, rows, arrival=2.0)], 2.0, policy, lambda _: 0.0)
            assert alone_reason(rows, policy) == f.reason, rows


# -- the batcher counting them -----------------------------------------------------------------------


class Gated:
    """A backend whose runs wait for `gate`; y = x."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.started = asyncio.Event()

    async def run(self, inputs: Tensors) -> Tensors:
        self.started.set()
        await self.gate.wait()
        return {"y": inputs["x"]}


def x() -> Tensors:
    return {"x": np.zeros((1, 2), np.float32)}


async def test_batcher_counts_expired_late_drain_and_queue_bytes() -> None:
    stats, backend, now = ModelStats(), Gated(), [100.0]
    policy = BatchingPolicy(max_batch_size=8)
    budget = ByteBudget(10**6, "max_queued_bytes_per_model")
    b = DynamicBatcher([backend], policy, stats, clock=lambda: now[0], byte_budgets=[budget])
    b.start()
    loop = asyncio.get_running_loop()
    late = loop.create_task(b.submit(x(), 1, deadline=101.0))
    await asyncio.wait_for(backend.started.wait(), 5)
    queued = loop.create_task(b.submit(x(), 1))  # behind the running batch
    expiring = loop.create_task(b.submit(x(), 1, deadline=now[0] + 0.001))
    await asyncio.wait_for(asyncio.shield(asyncio.wait([expiring], timeout=5)), 5)
    with pytest.raises(DeadlineExceeded):
        expiring.result()  # its timer (real time) fired while the instance was busy
    assert stats.expired == 1 and b.queued_requests == 1 and b.queued_bytes == 8
    now[0] = 102.0  # the running batch ends after its deadline
    stop = loop.create_task(b.stop(drain=True, timeout_s=5))
    backend.gate.set()
    with pytest.raises(DeadlineExceeded):
        await late
    assert (await queued)["y"].shape == (1, 2)
    await stop
    assert stats.late == 1 and stats.dispatch["idle"] == 1 and stats.dispatch["drain"] == 1
    assert sum(stats.dispatch.values()) == 2 and set(stats.dispatch) == set(DISPATCH_REASONS)
    assert stats.slack_hist.count == 1 and b.queued_bytes == 0
