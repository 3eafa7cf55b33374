"""A batch whose run waits in its instance's executor behind a stuck run (batcher/watchdog.py).

The watchdog abandons a stuck run but cannot free its thread: without a replacement (none given, or
one that failed) the next batch waits in the executor's queue, and its requests' deadlines may all
pass there. Such a batch must not be computed once a thread frees: its requests are answered
DEADLINE_EXCEEDED unrun (counted `expired`); a batch with a request still live, or one without a
deadline, runs as before. The clock is a fake the test moves while the batch waits; the stuck run
waits on a threading.Event in its executor thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from batcher import BatchingPolicy, DynamicBatcher, ModelStats, Tensors
from batcher.errors import ComputedLate, DeadlineExceeded, RunTimedOut
from batcher.run_count import RunCount
from batcher.types import Backend
from tests.support.batcher_fakes import Clock, turns_until

LONG = 5.0  # an upper bound no healthy run comes near
# The watchdog's limit, for the run meant to outlive it. The batch queued behind it starts its own
# timer when handed to the executor and must reach its thread before that timer ends: the test
# frees the thread a few loop turns later, so the limit is the slack for a loaded machine.
LIMIT = 1.0


class FirstHangs:
    """A RunsBlocking fake on one executor thread answering y = 2 * x: its first run waits for
    `release` in that thread; `batches` records every run's request ids, in order."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="one")
        self.release = threading.Event()
        self.hung = threading.Event()
        self.batches: list[list[float]] = []

    @property
    def executor(self) -> ThreadPoolExecutor:
        return self.pool

    async def run(self, inputs: Tensors) -> Tensors:  # the Backend protocol; unused
        raise AssertionError("a RunsBlocking backend is run through run_blocking")

    def run_blocking(self, inputs: Tensors) -> Tensors:
        self.batches.append(inputs["x"][:, 0].tolist())
        if len(self.batches) == 1:
            self.hung.set()
            self.release.wait(LONG * 4)
        return {"y": inputs["x"] * 2}


async def failing_replace(stuck: Backend) -> Backend:
    raise RuntimeError("no session today")


@pytest.fixture
def backend() -> Iterator[FirstHangs]:
    fake = FirstHangs()
    yield fake
    fake.release.set()
    fake.pool.shutdown(wait=True)


@pytest.fixture
async def batchers() -> AsyncIterator[list[DynamicBatcher]]:
    made: list[DynamicBatcher] = []
    yield made
    for b in made:
        await b.stop(drain=False, timeout_s=0.1)


def start(
    made: list[DynamicBatcher],
    backend: FirstHangs,
    clock: Clock,
    runs: RunCount,
    stats: ModelStats,
    **kw: Any,
) -> DynamicBatcher:
    options = {k: kw.pop(k) for k in ("run_timeout_s", "replace") if k in kw}
    policy = BatchingPolicy(**{"max_batch_size": 8, **kw})
    b = DynamicBatcher([backend], policy, stats, clock, run_count=runs, **options)
    b.start()
    made.append(b)
    return b


def submit(b: DynamicBatcher, rid: float, deadline: float | None = None) -> asyncio.Task[Tensors]:
    x = np.full((1, 2), rid, np.float32)
    return asyncio.ensure_future(b.submit({"x": x}, 1, deadline=deadline))


async def hung(backend: FirstHangs) -> None:
    assert await asyncio.wait_for(asyncio.to_thread(backend.hung.wait, LONG), LONG + 1)


async def outcome(task: asyncio.Task[Tensors]) -> Tensors | BaseException:
    try:
        return await asyncio.wait_for(task, LONG)
    except Exception as exc:
        return exc


async def test_batches_waiting_for_the_executor_past_their_deadlines_are_not_computed(
    backend: FirstHangs, batchers: list[DynamicBatcher]
) -> None:
    clock, runs, stats = Clock(), RunCount(), ModelStats()
    b = start(batchers, backend, clock, runs, stats, max_batch_size=1, max_batches_in_flight=5)
    first = submit(b, 1)
    await hung(backend)
    expiring = submit(b, 2, deadline=clock.now + 1.0)
    undated = submit(b, 3)  # no deadline: never skipped
    mixed = [submit(b, 4, deadline=clock.now + 1.0), submit(b, 5, deadline=clock.now + 1.0)]
    await turns_until(lambda: runs.started == 5)  # each submitted to the one busy thread
    clock.now += 2.0  # every deadline above has passed while they waited
    backend.release.set()
    assert isinstance(await outcome(first), dict)
    failed = await outcome(expiring)
    assert type(failed) is DeadlineExceeded and "waited for a thread" in str(failed)
    assert isinstance(await outcome(undated), dict)
    for task in mixed:  # past their deadlines too, each in its own batch
        assert type(await outcome(task)) is DeadlineExceeded
    assert backend.batches == [[1], [3]]  # neither 2 nor 4 nor 5 computed
    assert (stats.expired, stats.late) == (3, 0)
    assert b.watchdog.timeouts == 0


async def test_a_batch_with_one_live_request_runs_as_before(
    backend: FirstHangs, batchers: list[DynamicBatcher]
) -> None:
    clock, runs, stats = Clock(), RunCount(), ModelStats()
    b = start(batchers, backend, clock, runs, stats, max_batches_in_flight=2)
    first = submit(b, 1)
    await hung(backend)
    pair = [submit(b, 2, deadline=clock.now + 1.0), submit(b, 3, deadline=clock.now + 10.0)]
    await turns_until(lambda: runs.started == 2)
    clock.now += 2.0  # 2's deadline passed, 3's not
    backend.release.set()
    assert isinstance(await outcome(first), dict)
    assert type(await outcome(pair[0])) is ComputedLate  # computed with 3: answered late, as before
    assert isinstance(await outcome(pair[1]), dict)
    assert backend.batches == [[1], [2, 3]] and (stats.expired, stats.late) == (0, 1)


async def test_after_a_failed_replacement_a_batch_behind_the_stuck_run_is_not_computed(
    backend: FirstHangs, batchers: list[DynamicBatcher]
) -> None:
    clock, runs, stats = Clock(), RunCount(), ModelStats()
    b = start(batchers, backend, clock, runs, stats, run_timeout_s=LIMIT, replace=failing_replace)
    with pytest.raises(RunTimedOut):
        await asyncio.wait_for(submit(b, 1), LONG)
    later = submit(b, 2, deadline=clock.now + 1.0)  # its instance kept the stuck backend
    await turns_until(lambda: runs.started == 2)
    clock.now += 2.0
    backend.release.set()  # the stuck run ends after all: the thread takes the queued batch
    assert type(await outcome(later)) is DeadlineExceeded
    assert backend.batches == [[1]]
    assert (stats.expired, stats.late) == (1, 0)
    assert (b.watchdog.timeouts, b.watchdog.replaced) == (1, 0)  # the skipped run is no timeout
