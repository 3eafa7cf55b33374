"""The load worker's clock: it must never start a window before the window's own start time."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import cast

import grpc
import pytest

from loadtest import worker
from loadtest.scenario import WorkerPlan
from loadtest.stats import Recorder

EARLY_S = 0.002  # how early the stand-in timer wakes: more than uvloop's ~1 ms


def test_sleep_until_waits_out_a_timer_that_wakes_early(monkeypatch: pytest.MonkeyPatch) -> None:
    real_sleep = asyncio.sleep
    naps: list[float] = []

    async def early_sleep(delay: float) -> None:
        # Each wait's first nap wakes at once (early for certain, however loaded the machine: a
        # real nap of delay - EARLY_S had overslept past the target beside other tests, and then
        # nothing slept again); later naps sleep as asked.
        first = not naps or naps[-1] < 0
        naps.append(delay)
        await real_sleep(0 if first else delay)

    monkeypatch.setattr(worker.asyncio, "sleep", early_sleep)

    async def main() -> list[float]:
        overshoot = []
        for wait_s in (0.005, 0.0105, 0.02):
            when = time.monotonic() + wait_s
            await worker.sleep_until(when)
            overshoot.append(time.monotonic() - when)
            naps.append(-1.0)  # the end of one wait
        return overshoot

    overshoot = asyncio.run(main())
    assert min(overshoot) >= 0, overshoot
    woke_early_then_slept = sum(1 for a, b in itertools.pairwise(naps) if a >= 0 and b >= 0)
    assert woke_early_then_slept >= 1, naps  # it did sleep again after waking early


def test_sleep_until_a_past_time_returns_without_sleeping(monkeypatch: pytest.MonkeyPatch) -> None:
    naps: list[float] = []

    async def recorded_sleep(delay: float) -> None:
        naps.append(delay)

    monkeypatch.setattr(worker.asyncio, "sleep", recorded_sleep)
    asyncio.run(worker.sleep_until(time.monotonic() - 1.0))
    assert naps == []


def test_an_open_loop_never_sends_before_the_time_its_latency_counts_from(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_sleep = asyncio.sleep

    async def early_sleep(delay: float) -> None:
        await real_sleep(max(0.0, delay - EARLY_S))

    sends: list[tuple[float, float]] = []  # (scheduled, sent)

    class Recording:
        def __init__(self, channel: object, plan: WorkerPlan, recorder: Recorder) -> None:
            pass

        async def send(self, payload: bytes, scheduled: float) -> None:
            sends.append((scheduled, time.monotonic()))

    monkeypatch.setattr(worker.asyncio, "sleep", early_sleep)
    monkeypatch.setattr(worker, "_Unary", Recording)

    async def main() -> None:
        start = time.monotonic() + 0.005
        plan = WorkerPlan(
            address="127.0.0.1:1", mode="open", concurrency=1, rate=200.0, arrival="constant", phase_s=0.0,
            payloads=(b"",), deadline_s=None, start_at=start, warmup_s=0.0, duration_s=0.05, drain_s=1.0,
            max_requests=10, max_in_flight=10, seed=1,
        )  # fmt: skip
        await worker._open([cast(grpc.aio.Channel, None)], plan, Recorder(plan.window, None))

    asyncio.run(main())
    assert len(sends) == 10
    early = [scheduled - sent for scheduled, sent in sends if sent < scheduled]
    assert early == [], early
