"""Flights: the batches a DynamicBatcher has taken from its queue, until each has landed.

A batch is in flight from the moment formation takes it until its answers are being set. The
batcher is idle when nothing is queued and nothing is in flight: `stop()` waits for that. Each
flight runs as a task of its own; a task that ends without answering its requests (cancelled by
`stop()`, or failed by a bug) still gives each of them exactly one outcome here.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from batcher.batch_io import stopped
from batcher.queue import Request, is_done, settle_error


@dataclass(slots=True, eq=False)
class Flight:
    """One batch taken from the queue, until it has landed (its answers are being set)."""

    batch: list[Request]
    formed_at: float | None = None  # the batcher's clock when formation took it (None: not told)
    landed: bool = False


class Flights:
    """The batches in flight, their run tasks, and the idle event (`queued()`: requests queued)."""

    def __init__(self, queued: Callable[[], int]) -> None:
        self._queued = queued
        self.count = 0  # batches taken from the queue and not yet answered
        self.runs: set[asyncio.Task[None]] = set()
        self.idle = asyncio.Event()

    def take(self) -> None:
        """A batch is about to leave the queue: counted before its requests are removed, so the
        batcher never looks idle meanwhile."""
        self.count += 1

    def launch(
        self, run: Coroutine[Any, Any, None], flight: Flight, slots: asyncio.Semaphore
    ) -> asyncio.Task[None]:
        """Run `flight` as its own task; its slot is released and its requests answered when it ends."""
        task = asyncio.get_running_loop().create_task(run)
        self.runs.add(task)
        task.add_done_callback(functools.partial(self._run_done, flight, slots))
        return task

    def land(self, flight: Flight) -> None:
        """The batch no longer counts as in flight: done before its answers are set, so a caller
        woken by its answer already sees the model idle (and may take the fast path)."""
        if not flight.landed:
            flight.landed = True
            self.count -= 1
            self.check_idle()

    def check_idle(self) -> None:
        if self._queued() == 0 and self.count == 0:
            self.idle.set()
        else:
            self.idle.clear()

    def _run_done(self, flight: Flight, slots: asyncio.Semaphore, task: asyncio.Task[None]) -> None:
        self.runs.discard(task)
        slots.release()
        self.land(flight)
        # Safety net for exactly one outcome: a run cancelled by stop() (even before it started).
        error: BaseException | None = None if task.cancelled() else task.exception()
        for p in flight.batch:
            if not is_done(p):
                settle_error(p, error if error is not None else stopped())
