"""The load worker's clock: it must never start a window before the window's own start time."""

from __future__ import annotations

import asyncio
import time

import pytest

from loadtest import worker

EARLY_S = 0.002  # how early the stand-in timer wakes: more than uvloop's ~1 ms


def test_sleep_until_waits_out_a_timer_that_wakes_early(monkeypatch: pytest.MonkeyPatch) -> None:
    real_sleep = asyncio.sleep
    naps: list[float] = []

    async def early_sleep(delay: float) -> None:
        naps.append(delay)
        await real_sleep(max(0.0, delay - EARLY_S))

    monkeypatch.setattr(worker.asyncio, "sleep", early_sleep)

    async def main() -> list[float]:
        overshoot = []
        for wait_s in (0.005, 0.0105, 0.02):
            when = time.monotonic() + wait_s
            await worker._sleep_until(when)
            overshoot.append(time.monotonic() - when)
        return overshoot

    overshoot = asyncio.run(main())
    assert min(overshoot) >= 0, overshoot
    assert len(naps) > 3  # it did sleep again after waking early


def test_sleep_until_a_past_time_returns_without_sleeping(monkeypatch: pytest.MonkeyPatch) -> None:
    naps: list[float] = []

    async def recorded_sleep(delay: float) -> None:
        naps.append(delay)

    monkeypatch.setattr(worker.asyncio, "sleep", recorded_sleep)
    asyncio.run(worker._sleep_until(time.monotonic() - 1.0))
    assert naps == []
