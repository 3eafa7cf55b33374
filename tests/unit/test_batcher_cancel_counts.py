"""A caller that goes away after its request's run answered it, before its await resumed: the
request was computed and counted (queue, compute, inference_count), so its await says so
(`ComputedThenCancelled`) and the server counts it a success, never in neither success nor fail."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from batcher import BatchingPolicy, DynamicBatcher, ModelStats, Tensors
from batcher.errors import ComputedThenCancelled


class CancelsItsCaller:
    """A backend that, as its run ends, has the caller's task cancelled in the loop turn before
    the run's answer resumes it (the stream's end meeting the batch's end)."""

    def __init__(self) -> None:
        self.caller: asyncio.Task[Any] | None = None

    async def run(self, inputs: Tensors) -> Tensors:
        assert self.caller is not None
        asyncio.get_running_loop().call_soon(self.caller.cancel)  # queued before the answer's wake-up
        return {"y": inputs["x"] * 2}


async def test_a_caller_cancelled_after_its_run_answered_it_is_told_it_was_computed() -> None:
    stats = ModelStats()
    backend = CancelsItsCaller()
    batcher = DynamicBatcher([backend], BatchingPolicy(max_batch_size=8), stats, inline_max_s=0.0)
    batcher.start()
    told: list[BaseException] = []

    async def call() -> Tensors:
        try:
            return await batcher.enqueue({"x": np.ones((1, 2), np.float32)}, batcher.admission(1))
        except asyncio.CancelledError as exc:
            told.append(exc)
            raise

    try:
        caller = backend.caller = asyncio.ensure_future(call())
        await asyncio.wait([caller])
        assert caller.cancelled()
        (exc,) = told
        assert isinstance(exc, ComputedThenCancelled)  # the server counts it a success
        # Counted as computed, as its answer (written or not) was made.
        assert (stats.inference_count, stats.queue.count, stats.compute_infer.count) == (1, 1, 1)
    finally:
        await batcher.stop(drain=False, timeout_s=0.1)
