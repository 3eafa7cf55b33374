"""A Claim withdraws a request while it is queued or before it is queued, never once a batch took it
(batcher/claim.py, DynamicBatcher.enqueue). Order is controlled with a gate, not sleeps."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from batcher import BatchingPolicy, DynamicBatcher, ModelStats
from batcher.claim import Claim
from tests.unit.test_batcher_dynamic import LONG, FakeBackend, MakeBatcher, make, turns_until, x

__all__ = ["make"]  # the fixture, imported for its use here


class Superseded(Exception):
    pass


def enqueue(b: DynamicBatcher, rid: float, claim: Claim) -> asyncio.Task[object]:
    return asyncio.ensure_future(b.enqueue(x(rid), b.admission(1), claim=claim))


async def test_a_queued_request_is_withdrawn_and_never_computed(make: MakeBatcher) -> None:
    gate = asyncio.Event()
    be = FakeBackend(gate)
    b = make(be)
    running, queued = Claim(), Claim()
    first = enqueue(b, 1, running)
    await asyncio.wait_for(be.started.wait(), LONG)
    second = enqueue(b, 2, queued)
    await turns_until(lambda: b.queued_requests == 1)
    assert not running.withdraw(Superseded())  # its batch is running: it is computed
    assert queued.withdraw(Superseded())
    assert b.queued_requests == 0
    with pytest.raises(Superseded):
        await asyncio.wait_for(second, LONG)
    gate.set()
    out = await asyncio.wait_for(first, LONG)
    assert (np.asarray(out["y"]) == 2).all()  # type: ignore[index]
    assert be.batches == [[1]]
    assert not queued.withdraw(Superseded())  # once only


async def test_a_request_withdrawn_before_it_is_queued_is_refused_at_the_door() -> None:
    b = DynamicBatcher([FakeBackend()], BatchingPolicy(max_batch_size=8), ModelStats())
    b.start()
    claim = Claim()
    assert claim.withdraw(Superseded())
    with pytest.raises(Superseded):
        await b.enqueue(x(1), b.admission(1), claim=claim)
    assert b.queued_requests == 0
    await b.stop()


def test_admitted_runs_its_hook_once_and_a_claim_without_one_does_nothing() -> None:
    calls: list[str] = []
    claim = Claim(on_admitted=lambda: calls.append("older withdrawn"))
    assert calls == []  # not on arrival: only once the request passed its checks
    claim.admitted()
    claim.admitted()
    assert calls == ["older withdrawn"]
    Claim().admitted()  # no hook
