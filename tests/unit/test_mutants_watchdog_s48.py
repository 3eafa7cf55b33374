"""batcher/watchdog.py: survivors of the 2026-12-05 mutation run (s48).

A run handed to its instance's executor starts unless the batch's `start_by` has passed (exactly at
it, it still runs); a queueing backend (RunsBlockingBefore) gets a `started` callback when a limit
is set, and the watchdog times its run from that callback, not from the hand-over; an instance whose
executor is shut down answers InstanceClosed naming its model.

The fake backend waits for its turn (`turn`, a threading.Event the test sets) in its executor thread,
as a queueing backend waits behind other processes' batches. To time without a wall clock, one test
replaces the running loop's `time` with a fake that stands still until the test moves it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from batcher.errors import InstanceClosed
from batcher.types import Tensors
from batcher.watchdog import Instance, Watchdog, _start_signal
from tests.support.batcher_fakes import OnPool

LONG = 5.0  # an upper bound no healthy wait comes near


class Queued(OnPool):
    """A RunsBlocking backend that queues its batches (RunsBlockingBefore), answering y = 2 * x: it
    records the `started` it is handed, waits for `turn`, then calls `started` (when given)."""

    def __init__(self) -> None:
        super().__init__("queued")
        self.turn = threading.Event()
        self.turn.set()
        self.waiting = threading.Event()
        self.handed: list[Callable[[], None] | None] = []

    def run_blocking(self, inputs: Tensors) -> Tensors:
        return {"y": inputs["x"] * 2}

    def run_blocking_before(
        self, inputs: Tensors, start_by: float | None, started: Callable[[], None] | None = None
    ) -> Tensors:
        self.handed.append(started)
        self.waiting.set()
        self.turn.wait(LONG)
        if started is not None:
            started()
        return self.run_blocking(inputs)


class Plain(OnPool):
    """A RunsBlocking backend that does not queue (no `run_blocking_before`): y = 2 * x."""

    def __init__(self) -> None:
        super().__init__("plain")
        self.runs = 0

    def run_blocking(self, inputs: Tensors) -> Tensors:
        self.runs += 1
        return {"y": inputs["x"] * 2}


@pytest.fixture
def queued() -> Iterator[Queued]:
    fake = Queued()
    yield fake
    fake.turn.set()
    fake.pool.shutdown(wait=True)


@pytest.fixture
def plain() -> Iterator[Plain]:
    fake = Plain()
    yield fake
    fake.pool.shutdown(wait=True)


def x() -> Tensors:
    return {"x": np.array([[1.0], [2.0]], np.float32)}


async def test_a_batch_handed_over_exactly_at_its_start_by_still_runs(plain: Plain) -> None:
    """`start_by` is the batch's latest deadline: a run is left unrun (ExpiredUnrun) only past it.
    At exactly that time (`left == 0`) it runs; `left <= 0` dropped it unrun."""
    watchdog = Watchdog(0.0, None, "m", clock=lambda: 5.0)
    outputs, _ = await watchdog.run(Instance(0, plain), x(), inline=False, start_by=5.0)
    assert outputs["y"].tolist() == [[2.0], [4.0]] and plain.runs == 1


@pytest.mark.parametrize(("limit_s", "given"), [(0.5, True), (2.0, True), (0.0, False)])
async def test_a_queueing_backend_gets_a_start_callback_only_when_runs_are_timed(
    queued: Queued, limit_s: float, given: bool
) -> None:
    """With a run limit (any positive one, below 1 s too) the backend is handed `started`, which it
    calls from its thread as the run starts: that must work (the loop's event is set), and the run
    is answered. Without a limit nothing times the run: it is handed None."""
    watchdog = Watchdog(limit_s, None, "m")
    outputs, _ = await watchdog.run(Instance(0, queued), x(), inline=False)
    assert outputs["y"].tolist() == [[2.0], [4.0]]
    if given:
        assert len(queued.handed) == 1 and callable(queued.handed[0])
    else:
        assert queued.handed == [None]


async def test_the_start_callback_sets_the_event_on_the_loop(queued: Queued) -> None:
    """`started`, called from another thread, sets `began` on the loop: by the time a callback the
    test schedules after it runs (the loop runs them in order), the event is set."""
    loop = asyncio.get_running_loop()
    began, started = _start_signal(loop, queued)
    assert began is not None and started is not None
    await loop.run_in_executor(queued.pool, started)
    after = loop.create_future()
    loop.call_soon(after.set_result, None)
    await after
    assert began.is_set()


async def test_a_queued_run_is_timed_from_its_start_not_from_its_hand_over(
    queued: Queued, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch waits in the backend's queue for 2 s of loop time, past the 1 s limit, then runs at
    once: it is answered. Timing from the hand-over (`watch(run)` without `began`) failed it with
    RunTimedOut while it waited, and the instance would have been replaced for another's run."""
    loop = asyncio.get_running_loop()
    now = [loop.time()]
    monkeypatch.setattr(loop, "time", lambda: now[0])  # loop time stands still until moved
    queued.turn.clear()
    watchdog = Watchdog(1.0, None, "m")
    task = asyncio.create_task(watchdog.run(Instance(0, queued), x(), inline=False))
    assert await loop.run_in_executor(None, queued.waiting.wait, LONG)  # in the queue now
    now[0] += 2.0  # a timer armed at the hand-over is due
    for _ in range(3):
        await asyncio.sleep(0)  # loop turns: such a timer runs in them
    queued.turn.set()
    outputs, _ = await task
    assert outputs["y"].tolist() == [[2.0], [4.0]]


async def test_a_run_on_a_shut_down_executor_names_its_model(plain: Plain) -> None:
    """The instance's executor was shut down (its version retired): InstanceClosed, whose message
    names the model the request was sent to."""
    plain.pool.shutdown(wait=True)
    watchdog = Watchdog(1.0, None, "resnet")
    with pytest.raises(InstanceClosed, match=r"^model 'resnet': its version was retired"):
        await watchdog.run(Instance(0, plain), x(), inline=False)
