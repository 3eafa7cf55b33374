"""An ensemble request whose call is cut (cancelled, no step error) counts in the ensemble's own
deadline outcome when the cut came at its deadline: `late` with a step in its run, `expired` with
it still queued; a cut well before its deadline is in none (as a direct call). It had been in none.

Fake step models (tests/unit/test_ensemble_scheduler.py) whose first step's runs wait while `hold`
is clear; the ensemble's clock is a fake, so "at its deadline" is exact.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from batcher.stats import ModelStats
from batcher.types import Tensors
from tests.unit.test_ensemble_scheduler import Clock, FakeStep, _admission, _scheduler, _steps

LONG = 5.0
HARD = 10.0  # the request's deadline on the ensemble's clock


class HeldStep(FakeStep):
    """`add_one`, whose runs wait while `hold` is clear."""

    def __init__(self) -> None:
        super().__init__("add_one", lambda x: x + 1)
        self.hold = asyncio.Event()
        self.started = asyncio.Event()

    async def run(self, inputs: Tensors) -> Tensors:
        self.started.set()
        await self.hold.wait()
        return await super().run(inputs)


async def _cut(*, queued: bool, at: float) -> tuple[ModelStats, ModelStats]:
    """Cut an ensemble request at ensemble-clock time `at` while its first step runs, or (`queued`)
    waits behind another request's run; the ensemble's stats and the held step's."""
    held = HeldStep()
    steps = _steps(add_one=held)
    for step in steps.values():
        step.batcher.start()
    clock, stats = Clock(), ModelStats()
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    try:
        busy = None
        if queued:  # another request holds the step's one instance
            busy = asyncio.ensure_future(held.batcher.enqueue({"x": x}, held.batcher.admission(1)))
            await asyncio.wait_for(held.started.wait(), LONG)
        request = asyncio.ensure_future(
            _scheduler("linear", steps, clock).run_counted(stats, {"IN": x}, _admission(HARD), 0)
        )
        while not (held.batcher.queued_requests if queued else held.started.is_set()):
            await asyncio.sleep(0)  # (turns of the loop until the step is queued or running)
        clock.now = at
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        held.hold.set()
        if busy is not None:
            await asyncio.wait_for(busy, LONG)
    finally:
        held.hold.set()
        for step in steps.values():
            await step.batcher.stop()
    return stats, held.stats


def test_a_cut_at_its_deadline_during_a_steps_run_counts_late() -> None:
    stats, _ = asyncio.run(_cut(queued=False, at=HARD - 0.001))
    assert (stats.shed, stats.expired, stats.late, stats.success.count) == (0, 0, 1, 0)


def test_a_cut_at_its_deadline_with_its_step_queued_counts_expired() -> None:
    stats, _ = asyncio.run(_cut(queued=True, at=HARD - 0.001))
    assert (stats.shed, stats.expired, stats.late, stats.success.count) == (0, 1, 0, 0)


def test_a_cut_well_before_its_deadline_is_in_no_outcome() -> None:
    for queued in (False, True):
        stats, _ = asyncio.run(_cut(queued=queued, at=1.0))
        assert (stats.shed, stats.expired, stats.late, stats.success.count) == (0, 0, 0, 0)
