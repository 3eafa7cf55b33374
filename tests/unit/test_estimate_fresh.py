"""A freshly loaded model's first burst: shedding rests on batch sizes seen, not on sizes
extrapolated by rows from the one size seen (a fault-delay model's 1-row run of 100 ms had
predicted 700 ms for a batch of 7, and 8 of 42 requests of the first burst were shed)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest

from batcher import DynamicBatcher
from batcher.estimate import ServiceTimeEstimator
from tests.support.batcher_fakes import Clock, Gated, MakeBatcher, started_batchers, turns_until

LONG = 5.0  # an upper bound no healthy run comes near


def test_predict_seen_takes_the_nearest_smaller_size_seen_as_it_was_seen() -> None:
    e = ServiceTimeEstimator(max_margin=0.0)
    assert e.predict_seen(8, 0.0) == 0.0  # nothing seen: an unknown cost refuses nothing
    e.observe(1, 0.100, 0.0)  # a fresh model's first run: one row
    assert e.predict(7, 0.0) == pytest.approx(0.700)  # formation's over-estimate is kept
    assert e.predict_seen(7, 0.0) == pytest.approx(0.100)  # shedding: only what runs proved
    assert e.predict_seen(1, 0.0) == pytest.approx(0.100)
    e.observe(8, 0.120, 0.0)  # once the size has run, both read its own runs
    assert e.predict_seen(7, 0.0) == pytest.approx(0.120)
    assert e.predict(7, 0.0) == pytest.approx(0.120)
    assert e.predict_seen(32, 0.0) == pytest.approx(0.120)  # 17..32 unseen: as 5..8 was seen


def test_predict_seen_fades_with_age_as_predict_does() -> None:
    e = ServiceTimeEstimator(half_life_s=1.0, max_margin=0.0)
    e.observe(1, 0.100, 0.0)
    assert e.predict_seen(4, 1.0) == pytest.approx(0.050)
    assert e.predict_seen(1, 1.0) == pytest.approx(e.predict(1, 1.0))


@pytest.fixture
async def batchers() -> AsyncIterator[MakeBatcher]:
    async with started_batchers() as made:
        yield made


def x(rid: float) -> dict[str, np.ndarray[Any, Any]]:
    return {"x": np.full((1, 2), rid, np.float32)}


async def test_a_fresh_models_first_burst_is_admitted_when_the_sizes_seen_say_it_fits(
    batchers: Callable[..., DynamicBatcher],
) -> None:
    clock = Clock()
    gate = asyncio.Event()
    be = Gated(gate)
    b = batchers(be, clock)
    # The first run: 1 row, 1 s (a per-batch cost). Seconds, not tenths: the queued requests' real
    # timers (due ~9 s on) never run before a stalled machine forms them.
    b.estimator.observe(1, 1.0, clock.now)
    deadline = clock.now + 10.0
    first = asyncio.ensure_future(b.submit(x(0), 1, deadline=deadline))
    await asyncio.wait_for(be.started.wait(), LONG)  # running: 1 row
    # 20 more 1-row requests queue behind it: 3 batches of up to 8 rows. Seen: 1 s a batch, so
    # about 1 + 3 x 1 s. Extrapolated by rows it was 1 + 3 x 8 s: past the 10 s deadline, shed
    # from the 9th on.
    burst = [asyncio.ensure_future(b.submit(x(i), 1, deadline=deadline)) for i in range(1, 21)]
    await turns_until(lambda: b.queued_requests + sum(t.done() for t in burst) == len(burst))
    refused = [t for t in burst if t.done() and t.exception() is not None]
    assert [type(t.exception()).__name__ for t in refused] == []
    gate.set()
    answers = await asyncio.wait_for(asyncio.gather(first, *burst), LONG)
    assert [float(a["y"][0, 0]) for a in answers] == [2.0 * i for i in range(21)]
