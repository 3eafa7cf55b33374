"""An ensemble call cut at its deadline after its step's batch was formed but before that batch's
run started: the run drops the step unrun (the step counts `expired`), and the ensemble counts
`expired` too. It had counted `late` ("a batch had taken it"), disagreeing with its step.

The window is held open as a real one is while an instance's backend is replaced: the instance is
not ready, so the formed batch's run waits before it boards its requests. Fake step models
(tests/unit/test_ensemble_scheduler.py); the ensemble and the step share one fake clock, so "at its
deadline" is exact for both.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from batcher.dynamic import DynamicBatcher
from batcher.stats import ModelStats
from batcher.types import BatchingPolicy
from tests.unit.test_ensemble_scheduler import Clock, FakeStep, _admission, _scheduler, _steps

LONG = 5.0
HARD = 10.0  # the request's deadline on the shared clock


async def _cut_between_formation_and_run() -> tuple[ModelStats, ModelStats]:
    """The ensemble's stats and its first step's, for a call cut at its deadline while the step's
    batch is formed and its run waits for the instance."""
    clock = Clock()
    step = FakeStep("add_one", lambda x: x + 1)
    step.batcher = DynamicBatcher([step], BatchingPolicy(max_batch_size=8), step.stats, clock=clock)
    ready = step.batcher._instances[0].ready  # (clear while its backend is being replaced)
    ready.clear()
    steps = _steps(add_one=step)
    for s in steps.values():
        s.batcher.start()
    stats = ModelStats()
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    try:
        request = asyncio.ensure_future(
            _scheduler("linear", steps, clock).run_counted(stats, {"IN": x}, _admission(HARD), 0)
        )
        batcher = step.batcher
        # Formed: out of the queue, its batch in flight, its run waiting for the instance.
        while not (batcher.in_flight_batches == 1 and batcher.queued_requests == 0):
            await asyncio.sleep(0)  # (turns of the loop until the batch is formed)
        clock.now = HARD - 0.001
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
    finally:
        ready.set()  # the run starts now, and drops the step's request unrun
        for s in steps.values():
            await asyncio.wait_for(s.batcher.stop(), LONG)
    assert step.calls == []  # never computed
    return stats, step.stats


def test_a_cut_at_its_deadline_between_formation_and_run_counts_expired_as_its_step() -> None:
    stats, step = asyncio.run(_cut_between_formation_and_run())
    assert (step.shed, step.expired, step.late) == (0, 1, 0)
    assert (stats.shed, stats.expired, stats.late, stats.success.count) == (0, 1, 0, 0)
