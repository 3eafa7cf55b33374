"""The run watchdog: a batch that runs past its model's limit fails, and its instance is replaced.

A Python thread cannot be killed, so a run stuck in an instance's executor thread is abandoned:
the batch's requests fail at once with RunTimedOut, and the batcher asks its `replace` callable
(given by whoever built the backends; the batcher imports no backend) for a fresh backend, which
serves that instance's next batches. The old backend is the callable's to abandon (onnxruntime's
can ask a running session to stop; the thread ends when the run does, or never).

Only runs the batcher awaits can be watched: a run made inline on the event loop thread (tiny
batches, see dynamic.py) blocks the very loop that would time it. So once any run of a model has
exceeded the limit, the batcher runs nothing of that model inline again (`DynamicBatcher._trip`),
and backends that are not RunsBlocking (a fault-injecting backend, for one) never run inline.

An abandoned run keeps its executor thread: without a replacement (none given, or one that failed)
the instance's next batch waits in the executor's queue, maybe until every deadline in it has
passed. So a RunsBlocking run checks, in its thread as it starts, the latest deadline of its batch
(`start_by`): past it, it raises ExpiredUnrun instead of computing (one comparison per run). An
async backend's `run` decides itself when its compute starts: not checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar, cast

from batcher.batch_io import cpu_timed
from batcher.errors import InstanceClosed, RunTimedOut
from batcher.run_count import RunCount
from batcher.types import Backend, RunsBlocking, RunsBlockingBefore, Tensors

log = logging.getLogger(__name__)

T = TypeVar("T")


class ExpiredUnrun(Exception):
    """A run not started: when its executor thread took it, every request of its batch was past
    its deadline. The batch runner answers them DEADLINE_EXCEEDED; never a request's own answer."""


def _unless_expired(
    clock: Callable[[], float],
    start_by: float | None,
    blocking: RunsBlocking,
    inputs: Tensors,
    started: Callable[[], None] | None = None,
) -> tuple[Tensors, float]:
    """In the executor thread: `cpu_timed(run, inputs)`, unless `clock()` is past `start_by`. A
    backend that queues the batch further (RunsBlockingBefore) gets `start_by` on time.monotonic's
    clock, which other processes share, to check again when the batch's turn comes, and `started`
    to call when it does (the watchdog times the run from then, not the wait)."""
    left = None if start_by is None else start_by - clock()
    if left is not None and left < 0:
        raise ExpiredUnrun
    if not hasattr(blocking, "run_blocking_before"):
        return cpu_timed(blocking.run_blocking, inputs)
    queued = cast(RunsBlockingBefore, blocking)
    monotonic_by = None if left is None else time.monotonic() + left
    return cpu_timed(lambda batch: queued.run_blocking_before(batch, monotonic_by, started), inputs)


def _start_signal(
    loop: asyncio.AbstractEventLoop, blocking: RunsBlocking
) -> tuple[asyncio.Event | None, Callable[[], None] | None]:
    """For a queueing backend (RunsBlockingBefore): an event set, on the loop, when its run
    starts, and the callback that sets it from the executor thread; (None, None) for others."""
    if not hasattr(blocking, "run_blocking_before"):
        return None, None
    began = asyncio.Event()

    def started() -> None:
        # After a stop the loop may be closed: nobody awaits the run then, and the answer must
        # not turn into the loop's error in the executor thread.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(began.set)

    return began, started


# Given the backend that outlived the limit, a fresh one for the same instance (raises if it cannot).
ReplaceBackend = Callable[[Backend], Awaitable[Backend]]


def runs_blocking(backend: Backend) -> RunsBlocking | None:
    return cast(RunsBlocking, backend) if hasattr(backend, "run_blocking") else None


@dataclass(slots=True, eq=False)
class Instance:
    """One backend instance as its dispatcher sees it; the watchdog swaps its backend."""

    index: int
    backend: Backend
    blocking: RunsBlocking | None = None  # the same backend when it RunsBlocking, looked up once
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # clear while being replaced
    ran: bool = False  # whether its backend has run a batch here (its first run is cold: estimate.py)

    def __post_init__(self) -> None:
        self.blocking = runs_blocking(self.backend)
        self.ready.set()

    def swap(self, backend: Backend) -> None:
        self.backend = backend
        self.blocking = runs_blocking(backend)
        self.ran = False


class Watchdog:
    """Times the runs of one model version; `limit_s` 0 watches nothing."""

    def __init__(
        self,
        limit_s: float,
        replace: ReplaceBackend | None,
        name: str,
        runs: RunCount | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`runs`: counts every run this watchdog makes (shared by a server's batchers). `clock`:
        the batcher's, that deadlines are on; read in executor threads, so thread-safe."""
        if not limit_s >= 0:
            raise ValueError(f"run timeout must be >= 0 s, got {limit_s}")
        self.limit_s = limit_s
        self._replace = replace
        self._name = name
        self.timeouts = 0  # runs that outlived the limit
        self.replaced = 0  # instances replaced after one
        self._runs = runs if runs is not None else RunCount()
        self._clock = clock

    async def watch(self, run: Awaitable[T], began: asyncio.Event | None = None) -> T:
        """`run`'s result, or RunTimedOut once it has taken `limit_s` (the run is then cancelled
        where it is awaited: an executor thread already running it goes on, abandoned). `began`:
        timed from when it is set (a queueing backend's run starting), not from now."""
        if self.limit_s <= 0:
            return await run
        future = asyncio.ensure_future(run)
        if began is not None:
            waiter = asyncio.ensure_future(began.wait())
            try:
                await asyncio.wait((future, waiter), return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                future.cancel()  # our own task cancelled (stop): as awaiting the run would have
                raise
            finally:
                waiter.cancel()
            if future.done():
                return future.result()
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            future.cancel()

        timer = asyncio.get_running_loop().call_later(self.limit_s, expire)
        try:
            return await future
        except asyncio.CancelledError:
            if not expired:
                raise  # our own task was cancelled (stop): not a timeout
            raise RunTimedOut(
                f"the model instance did not finish the batch within run_timeout_s ({self.limit_s:g} s); "
                "the instance is being replaced"
            ) from None
        finally:
            timer.cancel()

    async def run(
        self, instance: Instance, inputs: Tensors, inline: bool, start_by: float | None = None
    ) -> tuple[Tensors, float | None]:
        """Run one batch on `instance`: on this thread when `inline` and it RunsBlocking, else in its
        backend's executor (or its own `run`) under this watchdog; the outputs and the run's CPU
        seconds (None where not measured). Counted in `runs` while it runs (no extra coroutine:
        one per batch). ExpiredUnrun when its executor thread takes it past `start_by` (the
        batch's latest deadline; None: never)."""
        self._runs.started += 1
        try:
            blocking = instance.blocking
            if blocking is None:
                return await self.watch(instance.backend.run(inputs)), None
            if inline:
                # Inline, the wall time is what the event loop was blocked: the cost that matters
                # here. Not watched (it blocks the loop that would time it): DynamicBatcher._trip.
                start = time.perf_counter()
                outputs = blocking.run_blocking(inputs)
                return outputs, time.perf_counter() - start
            loop = asyncio.get_running_loop()
            began, started = _start_signal(loop, blocking) if self.limit_s > 0 else (None, None)
            try:
                run = loop.run_in_executor(
                    blocking.executor, _unless_expired, self._clock, start_by, blocking, inputs, started
                )
            except RuntimeError as exc:  # its executor was shut down: the instance was closed
                raise InstanceClosed.of(self._name) from exc
            return await self.watch(run, began)
        finally:
            self._runs.ended += 1

    async def replace(self, instance: Instance, rows: int, requests: int) -> None:
        """After a timeout on `instance`: log it once, then give the instance a fresh backend (its
        batches wait on `ready` meanwhile). Should that fail, it keeps the old one: the next
        timeout tries again."""
        self.timeouts += 1
        log.error(
            "%s: instance %d ran a batch of %d rows (%d requests) past run_timeout_s (%g s); its "
            "requests fail, %s (timeout %d of this model)",
            self._name,
            instance.index,
            rows,
            requests,
            self.limit_s,
            "the stuck run is abandoned and the instance replaced"
            if self._replace
            else "the instance goes on",
            self.timeouts,
        )
        if self._replace is None:
            return
        if not instance.ready.is_set():  # another of its batches timed out: being replaced already
            await instance.ready.wait()
            return
        instance.ready.clear()
        try:
            instance.swap(await self._replace(instance.backend))
            self.replaced += 1
        except Exception:
            log.exception(
                "%s: instance %d could not be replaced; it keeps its backend", self._name, instance.index
            )
        finally:
            instance.ready.set()
