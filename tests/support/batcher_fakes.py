"""What a DynamicBatcher unit test runs it against: a settable clock, an async backend whose runs
wait at a gate the test opens (a run held without timing anything), the base of the blocking
backends' fakes, batchers stopped at the test's end, and a wait of loop turns (no timed sleep) for
a submitted task to reach the queue."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from batcher import BatchingPolicy, DynamicBatcher, ModelStats, Tensors


class Clock:
    """A fake clock: `now` until a test moves it."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Gated:
    """An async backend answering y = 2 * x; every run waits for `gate` (its own, closed, unless
    one is given; `gate_open`: set it now). `runs`: each run's rows, in order."""

    def __init__(self, gate: asyncio.Event | None = None, *, gate_open: bool = False) -> None:
        self.gate = asyncio.Event() if gate is None else gate
        if gate_open:
            self.gate.set()
        self.started = asyncio.Event()
        self.runs: list[int] = []

    async def run(self, inputs: Tensors) -> Tensors:
        self.runs.append(len(inputs["x"]))
        self.started.set()
        await self.gate.wait()
        return {"y": inputs["x"] * 2}


class OnPool:
    """What every RunsBlocking fake shares: its own one-thread executor (`pool`; the test shuts it
    down) and the async `run` of the Backend protocol, never the one called. Subclasses answer in
    `run_blocking`."""

    def __init__(self, name: str) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    @property
    def executor(self) -> ThreadPoolExecutor:
        return self.pool

    async def run(self, inputs: Tensors) -> Tensors:
        raise AssertionError("a RunsBlocking backend is run through run_blocking")


MakeBatcher = Callable[..., DynamicBatcher]


@asynccontextmanager
async def started_batchers() -> AsyncIterator[MakeBatcher]:
    """`make(backend, clock, max_batch_size=8)`: a started one-instance batcher; each is stopped
    (what is queued failed) on leaving."""
    made: list[DynamicBatcher] = []

    def make(backend: Any, clock: Clock, max_batch_size: int = 8) -> DynamicBatcher:
        b = DynamicBatcher([backend], BatchingPolicy(max_batch_size=max_batch_size), ModelStats(), clock)
        b.start()
        made.append(b)
        return b

    try:
        yield make
    finally:
        for b in made:
            await b.stop(drain=False, timeout_s=0.1)


async def turns_until(cond: Callable[[], bool], turns: int = 500) -> None:
    """Let the loop take turns (no timed sleep) until `cond` holds."""
    for _ in range(turns):
        if cond():
            return
        await asyncio.sleep(0)  # one loop turn: lets the submitted task reach the queue
    raise AssertionError("condition not reached")
