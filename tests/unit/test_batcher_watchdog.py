"""The run watchdog in the batcher (batcher/watchdog.py), with fake backends.

A hang is a threading.Event the fake's run waits on in its executor thread, released by the fake
replacement (as abandoning an onnxruntime instance ends its run) or at teardown. Order comes from
events and futures; real time appears only as the watchdog's limit (LIMIT, for runs meant to
outlive it) and as upper bounds.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from batcher import BatchingPolicy, DynamicBatcher, ModelStats, Tensors
from batcher.errors import NotAccepting, RunTimedOut
from batcher.types import Backend
from batcher.watchdog import Watchdog

LONG = 5.0  # an upper bound no healthy run comes near
LIMIT = 0.3  # the watchdog's limit where a run is meant to outlive it
LOOP = threading.current_thread().name


class Stuck:
    """A RunsBlocking fake answering y = 2 * x. A batch holding an id in `hang_on` waits in its
    executor thread for `release` (never on the event loop thread)."""

    def __init__(self, name: str, hang_on: tuple[float, ...] = (), workers: int = 1) -> None:
        self.name = name
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self.hang_on = set(hang_on)
        self.release = threading.Event()
        self.batches: list[list[float]] = []
        self.threads: list[str] = []
        self.hung = threading.Semaphore(0)  # released once per run that starts hanging

    @property
    def executor(self) -> ThreadPoolExecutor:
        return self.pool

    async def run(self, inputs: Tensors) -> Tensors:  # the Backend protocol; the batcher uses run_blocking
        raise AssertionError("a RunsBlocking backend is run through run_blocking")

    def run_blocking(self, inputs: Tensors) -> Tensors:
        ids = inputs["x"][:, 0].tolist()
        thread = threading.current_thread().name
        self.batches.append(ids)
        self.threads.append(thread)
        if self.hang_on & set(ids) and thread != LOOP:
            self.hung.release()
            self.release.wait(LONG * 4)
        return {"y": inputs["x"] * 2}


class Replacer:
    """The batcher's `replace`: a fresh Stuck for a stuck one, releasing the stuck one's thread."""

    def __init__(self, made: list[Stuck]) -> None:
        self.made = made
        self.calls: list[Backend] = []
        self.gate: asyncio.Event | None = None  # when set up, each replacement waits for it
        self.fail = False

    async def __call__(self, stuck: Backend) -> Backend:
        self.calls.append(stuck)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise RuntimeError("no session today")
        assert isinstance(stuck, Stuck)
        stuck.release.set()
        fresh = Stuck(f"fresh{len(self.calls)}")
        self.made.append(fresh)
        return fresh


def x(rid: float, rows: int = 1) -> dict[str, np.ndarray[Any, Any]]:
    return {"x": np.full((rows, 2), rid, np.float32)}


@pytest.fixture
def made() -> Iterator[list[Stuck]]:
    backends: list[Stuck] = []
    yield backends
    for backend in backends:  # no thread left waiting
        backend.release.set()
        backend.pool.shutdown(wait=True)


Make = Callable[..., DynamicBatcher]


@pytest.fixture
async def make(made: list[Stuck]) -> AsyncIterator[Make]:
    batchers: list[DynamicBatcher] = []

    def _make(*backends: Any, stats: ModelStats | None = None, **kw: Any) -> DynamicBatcher:
        made.extend(b for b in backends if isinstance(b, Stuck))
        options = {k: kw.pop(k) for k in ("inline_max_s", "run_timeout_s", "replace") if k in kw}
        b = DynamicBatcher(
            list(backends), BatchingPolicy(**{"max_batch_size": 8, **kw}), stats or ModelStats(), **options
        )
        b.start()
        batchers.append(b)
        return b

    yield _make
    for b in batchers:
        await b.stop(drain=False, timeout_s=0.1)


def submit(b: DynamicBatcher, rid: float, rows: int = 1) -> asyncio.Task[Tensors]:
    return asyncio.ensure_future(b.submit(x(rid, rows), rows))


async def result(task: Any) -> Tensors:
    out: Tensors = await asyncio.wait_for(task, LONG)
    return out


async def hanging(backend: Stuck) -> None:
    """Until a run of `backend` hangs (waited for on a thread, not polled)."""
    assert await asyncio.wait_for(asyncio.to_thread(backend.hung.acquire, True, LONG), LONG + 1)


async def test_a_stuck_run_fails_its_batch_and_the_replacement_serves_the_queue(
    make: Make, made: list[Stuck], caplog: pytest.LogCaptureFixture
) -> None:
    stats = ModelStats()
    stuck = Stuck("old", hang_on=(1,))
    replacer = Replacer(made)
    b = make(stuck, stats=stats, run_timeout_s=LIMIT, replace=replacer)
    with caplog.at_level(logging.ERROR, logger="batcher.watchdog"):
        first = submit(b, 1)
        await hanging(stuck)
        queued = submit(b, 2)  # waits behind the stuck run
        with pytest.raises(RunTimedOut, match=r"within run_timeout_s \(0\.3 s\)"):
            await result(first)
        assert ((await result(queued))["y"] == 4).all()  # served by the replacement
    assert replacer.calls == [stuck]
    fresh = made[-1]
    assert fresh.batches == [[2]] and stuck.batches == [[1]]
    assert (b.watchdog.timeouts, b.watchdog.replaced) == (1, 1)
    assert stats.execution_count == 1 and stats.inference_count == 1  # the stuck run computed nothing
    [record] = [r for r in caplog.records if r.name == "batcher.watchdog"]
    assert "instance 0 ran a batch of 1 rows (1 requests) past run_timeout_s" in record.getMessage()
    assert ((await result(submit(b, 3)))["y"] == 6).all()
    assert fresh.batches == [[2], [3]]


async def test_other_instances_serve_while_one_is_stuck(make: Make) -> None:
    stuck, other = Stuck("one", hang_on=(1,)), Stuck("two")
    b = make(stuck, other, run_timeout_s=LONG * 4)
    first = submit(b, 1)
    await hanging(stuck)
    for rid in (2, 3, 4):
        assert ((await result(submit(b, rid)))["y"] == 2 * rid).all()
    assert other.batches == [[2], [3], [4]]
    stuck.release.set()  # ends within the limit: an ordinary (slow) run
    assert ((await result(first))["y"] == 2).all()
    assert b.watchdog.timeouts == 0


async def test_an_async_backend_run_is_cancelled_at_the_limit(make: Make) -> None:
    cancelled = asyncio.Event()

    class Hangs:
        async def run(self, inputs: Tensors) -> Tensors:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise
            raise AssertionError("unreachable")

    b = make(Hangs(), run_timeout_s=LIMIT)  # no replace: the instance keeps its backend
    with pytest.raises(RunTimedOut):
        await result(submit(b, 1))
    assert cancelled.is_set() and b.watchdog.timeouts == 1 and b.watchdog.replaced == 0


async def test_after_a_timeout_nothing_runs_inline(make: Make, made: list[Stuck]) -> None:
    stuck = Stuck("old", hang_on=(9,))
    b = make(stuck, inline_max_s=1.0, run_timeout_s=LIMIT, replace=Replacer(made))
    await result(submit(b, 1))  # unknown cost: the executor measures it, cheap
    assert b.run_now(x(2), b.admission(1)) is not None  # the fast path, on this thread
    assert stuck.threads[-1] == LOOP
    with pytest.raises(RunTimedOut):
        await result(submit(b, 9, rows=2))  # 2 rows: unknown cost, the executor, stuck
    fresh = made[-1]
    assert b.estimator.cheap(1, 1.0)  # still known cheap, yet:
    assert b.run_now(x(3), b.admission(1)) is None  # no fast path
    await result(submit(b, 4))
    assert fresh.threads == [f"{fresh.name}_0"]  # watched, in the executor


async def test_two_stuck_batches_of_one_instance_replace_it_once(make: Make, made: list[Stuck]) -> None:
    stuck = Stuck("old", hang_on=(1, 2), workers=2)
    replacer = Replacer(made)
    replacer.gate = asyncio.Event()
    b = make(stuck, max_batch_size=1, max_batches_in_flight=2, run_timeout_s=LIMIT, replace=replacer)
    runs = [submit(b, 1)]
    await hanging(stuck)
    runs.append(submit(b, 2))
    await hanging(stuck)
    for run in runs:
        with pytest.raises(RunTimedOut):
            await result(run)
    later = submit(b, 3)  # queued while the instance is being replaced: waits for the new backend
    for _ in range(20):
        await asyncio.sleep(0)
    assert not later.done() and stuck.batches == [[1], [2]]
    replacer.gate.set()
    assert ((await result(later))["y"] == 6).all()
    assert replacer.calls == [stuck] and made[-1].batches == [[3]]
    assert (b.watchdog.timeouts, b.watchdog.replaced) == (2, 1)


async def test_a_batch_formed_while_its_instance_is_replaced_runs_on_the_new_backend(
    make: Make, made: list[Stuck]
) -> None:
    stuck = Stuck("old", hang_on=(1,), workers=2)
    replacer = Replacer(made)
    replacer.gate = asyncio.Event()
    b = make(stuck, max_batch_size=1, max_batches_in_flight=2, run_timeout_s=LIMIT, replace=replacer)
    with pytest.raises(RunTimedOut):
        await result(submit(b, 1))
    assert replacer.calls == [stuck]  # being replaced (held at the gate); the other slot is free
    later = submit(b, 2)
    await asyncio.wait_for(asyncio.to_thread(lambda: None), LONG)  # a thread hop: time to run it
    for _ in range(20):
        await asyncio.sleep(0)
    assert not later.done() and stuck.batches == [[1]]  # taken, but waiting for the new backend
    replacer.gate.set()
    assert ((await result(later))["y"] == 4).all()
    assert made[-1].batches == [[2]] and stuck.batches == [[1]]


async def test_a_failed_replacement_keeps_the_old_backend(
    make: Make, made: list[Stuck], caplog: pytest.LogCaptureFixture
) -> None:
    stuck = Stuck("old", hang_on=(1,))
    replacer = Replacer(made)
    replacer.fail = True
    b = make(stuck, run_timeout_s=LIMIT, replace=replacer)
    with caplog.at_level(logging.ERROR, logger="batcher.watchdog"):
        with pytest.raises(RunTimedOut):
            await result(submit(b, 1))
        stuck.release.set()  # the old run ends after all; the old backend serves again
        assert ((await result(submit(b, 2)))["y"] == 4).all()
    assert stuck.batches == [[1], [2]] and b.watchdog.replaced == 0
    assert any("instance 0 could not be replaced" in r.getMessage() for r in caplog.records)


async def test_without_a_limit_a_slow_run_is_never_failed(make: Make) -> None:
    stuck = Stuck("slow", hang_on=(1,))
    b = make(stuck)  # run_timeout_s defaults to 0: no watchdog
    first = submit(b, 1)
    await hanging(stuck)
    stuck.release.set()
    assert ((await result(first))["y"] == 2).all()
    assert b.watchdog.limit_s == 0 and b.watchdog.timeouts == 0


async def test_watch_passes_results_and_errors_through() -> None:
    dog = Watchdog(LONG, None, "m")

    async def answer() -> int:
        return 7

    async def fails() -> int:
        raise TimeoutError("the backend's own")

    assert await dog.watch(answer()) == 7
    with pytest.raises(TimeoutError, match="the backend's own"):  # not mistaken for the limit
        await dog.watch(fails())
    assert dog.timeouts == 0


async def test_a_stop_while_a_run_is_watched_is_a_stop_not_a_timeout(make: Make) -> None:
    stuck = Stuck("old", hang_on=(1,))
    b = make(stuck, run_timeout_s=LONG * 4)
    first = submit(b, 1)
    await hanging(stuck)
    await b.stop(drain=True, timeout_s=0.05)
    with pytest.raises(Exception) as failed:
        await result(first)
    assert not isinstance(failed.value, RunTimedOut) and b.watchdog.timeouts == 0


def test_a_negative_limit_is_refused() -> None:
    with pytest.raises(ValueError, match=r"run timeout must be >= 0 s, got -1"):
        Watchdog(-1.0, None, "m")


async def test_a_batch_reaching_a_closed_instance_is_not_accepting_not_internal(make: Make) -> None:
    """A retired version's instance closed while a batch still waited to run (a reload past its
    grace): the batch had failed with the executor's RuntimeError, answered INTERNAL. Nothing was
    computed: NotAccepting, which the server hands to the version serving now (else UNAVAILABLE)."""
    closed = Stuck("closed")
    closed.pool.shutdown(wait=True)  # as OnnxRuntimeBackend.close does
    b = make(closed)
    with pytest.raises(NotAccepting, match="its version was retired before this batch ran"):
        await result(submit(b, 1.0))
    assert closed.batches == []
