"""Every request with a deadline lands in exactly one deadline outcome, also when its caller's
deadline cut the call (gRPC cancels the handler at the deadline).

Such a request had been in no outcome (`sluiceway_deadline_outcome_total`): 8 of 105 in a tester's
overload run (Poisson, demo resnet, 1500 ms deadline): taken back from the run's counts as a
caller gone away, never counted `late` (computed, not answered in time) nor `expired` (never
computed). A caller gone well before its deadline is a cancellation, no deadline outcome.
Fake clock; a gated backend holds a run while the caller goes.
"""

from __future__ import annotations

import asyncio

import numpy as np

from batcher import BatchingPolicy, DynamicBatcher, ModelStats, Tensors
from tests.support.batcher_fakes import Clock, Gated

NOW = 100.0
LONG = 5.0  # an upper bound no healthy wait comes near
ROW = {"x": np.zeros((1, 2), np.float32)}


async def cut(task: asyncio.Task[Tensors]) -> None:
    """What gRPC does to a handler at its deadline: cancel it."""
    task.cancel()
    await asyncio.wait([task], timeout=LONG)
    assert task.cancelled()


async def test_a_request_cut_at_its_deadline_during_its_run_counts_late() -> None:
    clock, be, stats = Clock(), Gated(), ModelStats()
    b = DynamicBatcher([be], BatchingPolicy(max_batch_size=4), stats, clock)
    b.start()
    try:
        call = asyncio.ensure_future(b.submit(ROW, 1, deadline=NOW + 1.5))
        await asyncio.wait_for(be.started.wait(), LONG)
        clock.now = NOW + 1.5  # its deadline: the caller's call ends
        await cut(call)
        clock.now = NOW + 1.6
        be.gate.set()
    finally:
        be.gate.set()
        await b.stop()
    assert (stats.late, stats.expired, stats.shed, stats.success.count) == (1, 0, 0, 0)
    assert stats.inference_count == 0  # still taken back: not an answer


async def test_a_request_cut_at_its_deadline_while_queued_counts_expired() -> None:
    clock, be, stats = Clock(), Gated(), ModelStats()
    b = DynamicBatcher([be], BatchingPolicy(max_batch_size=4), stats, clock)
    b.start()
    try:
        running = asyncio.ensure_future(b.submit(ROW, 1))  # holds the one instance
        await asyncio.wait_for(be.started.wait(), LONG)
        queued = asyncio.ensure_future(b.submit(ROW, 1, deadline=NOW + 1.5))  # nothing known: timer at 1.5 s
        while b.queued_requests != 1:
            await asyncio.sleep(0)
        clock.now = NOW + 1.5
        await cut(queued)
        be.gate.set()
        await asyncio.wait_for(running, LONG)
    finally:
        be.gate.set()
        await b.stop()
    assert (stats.late, stats.expired, stats.shed) == (0, 1, 0)
    assert len(be.runs) == 1


async def test_a_caller_gone_long_before_its_deadline_is_no_deadline_outcome() -> None:
    clock, be, stats = Clock(), Gated(), ModelStats()
    b = DynamicBatcher([be], BatchingPolicy(max_batch_size=4), stats, clock)
    b.start()
    try:
        call = asyncio.ensure_future(b.submit(ROW, 1, deadline=NOW + 1.5))
        await asyncio.wait_for(be.started.wait(), LONG)
        clock.now = NOW + 0.5  # a second before its deadline: the caller cancelled
        await cut(call)
        be.gate.set()
    finally:
        be.gate.set()
        await b.stop()
    assert (stats.late, stats.expired, stats.shed, stats.success.count) == (0, 0, 0, 0)
