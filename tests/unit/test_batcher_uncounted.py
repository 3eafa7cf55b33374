"""Requests that are not the model's (shadow copies: `Admission.counted` False): computed, so in
the inference and execution counts, and nowhere else in its statistics. A 2 ms shadow timeout had
put 194 `expired` on a version that took no client traffic."""

from __future__ import annotations

import asyncio

import pytest

from batcher import DeadlineExceeded, DynamicBatcher, ModelStats, QueueFull
from batcher.admission import Admission
from tests.unit.test_mutants_dynamic import Clock, Gated, Make, make, result, submit, turns_until, x

__all__ = ["make"]  # the fixture, imported for pytest


def copy_of(b: DynamicBatcher, rid: float, deadline: float | None = None) -> asyncio.Task[object]:
    a: Admission = b.admission(1, deadline=deadline)._replace(counted=False)
    return asyncio.ensure_future(b.enqueue(x(rid), a))


async def test_a_computed_copy_counts_as_rows_and_runs_only(make: Make) -> None:
    stats, gate = ModelStats(), asyncio.Event()
    be = Gated(gate)
    b = make(be, stats=stats, max_batch_size=8, preferred_batch_sizes=(2,), max_queue_delay_s=60.0)
    request, copy = submit(b, 1), copy_of(b, 2)
    await turns_until(lambda: len(be.batches) == 1)
    gate.set()
    await result(request)
    await result(copy)
    assert be.batches == [[1.0, 2.0]]  # one run of both
    assert (stats.inference_count, stats.execution_count) == (2, 1)
    assert stats.compute_infer.count == 1 and stats.queue.count == 1  # the request only


async def test_a_copy_that_expires_or_is_refused_is_not_the_models(make: Make) -> None:
    clock, stats, gate = Clock(), ModelStats(), asyncio.Event()
    be = Gated(gate)
    b = make(be, clock=clock, stats=stats, max_batch_size=1, max_queue_size=1)
    running = submit(b, 1)
    await asyncio.wait_for(be.started.wait(), 10)
    doomed = copy_of(b, 2, deadline=clock.now + 10.0)
    await turns_until(lambda: b.queued_requests == 1)
    with pytest.raises(QueueFull):
        await result(copy_of(b, 3))  # the queue of one is full
    clock.now += 20.0  # past the copy's deadline when the instance is next free
    gate.set()
    await result(running)
    with pytest.raises(DeadlineExceeded):
        await result(doomed)
    assert stats.expired == 0 and stats.rejections["queue_full"] == 0 and stats.shed == 0
    assert stats.execution_count == 1  # the request's run; the copy was never computed
