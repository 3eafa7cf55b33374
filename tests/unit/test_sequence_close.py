"""A retired version's sequences (batcher/sequence.py close, server/models/manager.py _load_source):
no sequence opens on a closed SequenceBatcher, and a reload's new versions know why the old ones'
sequences ended before the old ones drain. Under reloads every 1.5 s, 7 to 23 of ~600 refusals of
sequences that had started read "it was never started" instead of "unloaded or replaced"."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from batcher.errors import NotAccepting
from batcher.sequence import SequenceBatcher
from batcher.sequence_types import SequenceRetired, UnknownSequence
from server.models.manager import ModelManager
from server.settings import ServerSettings
from tests.support import sequence_models as sm
from tests.support.repositories import write_model
from tests.unit.test_sequence_batcher import adm, make, x

REPLACED = "the model version serving it was unloaded or replaced"


async def test_a_start_after_close_is_refused_and_opens_nothing() -> None:
    # It opened a sequence nobody recorded as released: answered OK, dead at once, and its idle
    # timer held the retired batcher until max_sequence_idle.
    sb, runner, _, timers = make()
    await sb.infer(1, x(1.0), adm(), start=True)
    sb.close()
    armed = len(timers.pending)
    with pytest.raises(NotAccepting, match="unloaded or replaced before its sequence_start ran"):
        await sb.infer(2, x(1.0), adm(), start=True)
    assert sb.live == 0 and sb.state_bytes == 0
    assert len(timers.pending) == armed and all(t.cancelled for _, _, t in timers.pending)
    assert len(runner.feeds) == 1  # the refused start never ran
    with pytest.raises(UnknownSequence, match=REPLACED):
        await sb.infer(1, x(1.0), adm())
    assert 2 not in sb.released()


async def test_a_start_waiting_for_its_turn_when_close_ran_is_refused() -> None:
    # An end and the next start of one id, back to back: the start waits for the end's run.
    sb, runner, _, _ = make()
    runner.gated = True
    first = asyncio.create_task(sb.infer(5, x(1.0), adm(), start=True, end=True))
    while not runner.gates:
        await asyncio.sleep(0)
    restart = asyncio.create_task(sb.infer(5, x(2.0), adm(), start=True))
    await asyncio.sleep(0)
    sb.close()
    runner.gated = False
    runner.gates[0].set()
    await first
    with pytest.raises(NotAccepting):
        await restart
    assert sb.live == 0 and len(runner.feeds) == 1


async def test_a_reload_tells_the_new_version_before_the_old_one_drains(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "acc", sm.accumulator_model(tmp_path / "acc.onnx"), sm.accumulator_config())
    settings = ServerSettings(cache_dir=tmp_path / "cache", shutdown_grace_s=5.0)
    manager = ModelManager(repo, settings, lambda name, ready: None)
    await manager.load_all()
    old = manager.resolve("acc")
    assert old.sequences is not None
    ones = {"x": np.ones((1, 4), np.float32)}
    await old.sequences.infer(7, ones, old.batcher.admission(1), start=True)
    draining, gate = asyncio.Event(), asyncio.Event()
    stop = old.batcher.stop

    async def held_stop(*args: Any, **kwargs: Any) -> None:
        draining.set()  # the old version drains (a slow batch still running) until the gate opens
        await gate.wait()
        await stop(*args, **kwargs)

    old.batcher.stop = held_stop  # type: ignore[method-assign]
    reload = asyncio.create_task(manager.load("acc"))
    try:
        await asyncio.wait_for(draining.wait(), 30)
        new = manager.resolve("acc")
        assert new is not old and new.sequences is not None
        with pytest.raises(UnknownSequence, match=REPLACED):  # was: "it was never started"
            await new.sequences.infer(7, ones, new.batcher.admission(1))
        with pytest.raises(NotAccepting):  # a start still reaching the old one goes to the new
            await old.sequences.infer(8, ones, old.batcher.admission(1), start=True)
    finally:
        gate.set()
        await reload
        await manager.stop(1.0)


async def queued_behind_a_gated_run(
    sb: SequenceBatcher, runner: Any, sid: int, n: int
) -> list[asyncio.Task[Any]]:
    """`sid` started; then `n` continuations: the first held in its run (gated), the rest waiting
    for their turn."""
    await sb.infer(sid, x(1.0), adm(), start=True)
    runner.gated = True
    tasks = [asyncio.create_task(sb.infer(sid, x(1.0), adm()))]
    while not runner.gates:
        await asyncio.sleep(0)
    tasks += [asyncio.create_task(sb.infer(sid, x(1.0), adm())) for _ in range(n - 1)]
    await asyncio.sleep(0)  # each waits for its turn
    return tasks


async def test_requests_queued_when_close_ran_run_before_their_sequence_goes() -> None:
    # They were refused "must specify the START flag" at once: accepted requests, blamed on the client.
    sb, runner, _, _ = make()
    gone: list[object] = []
    sb.on_gone = gone.append
    tasks = await queued_behind_a_gated_run(sb, runner, 1, 3)
    sb.close()
    assert sb.live == 1 and sb.released()[1] == REPLACED and gone == [1]  # the routing is told now
    runner.gated = False
    runner.gates[0].set()
    await asyncio.wait_for(sb.drain(30.0), 30)
    answers = [(await t)["out"].tolist() for t in tasks]
    assert answers == [[[2, 2]], [[3, 3]], [[4, 4]]]
    assert sb.live == 0 and sb.state_bytes == 0 and gone == [1]  # not told twice
    with pytest.raises(UnknownSequence, match=REPLACED):  # one sent after the close: as before
        await sb.infer(1, x(1.0), adm())


async def test_what_the_drain_did_not_reach_is_unavailable_not_blamed_on_the_client() -> None:
    sb, runner, _, _ = make()
    tasks = await queued_behind_a_gated_run(sb, runner, 1, 3)
    sb.close()
    await sb.drain(0.0)  # the grace is spent: the sequence goes
    assert sb.live == 0
    runner.fail_next = NotAccepting()  # the retired batcher's stop fails its queued request
    runner.gates[0].set()
    for task in tasks:
        with pytest.raises(SequenceRetired, match="ended while this request waited") as info:
            await task
        assert not isinstance(info.value, NotAccepting)  # not handed to the new version: not live there
        assert REPLACED in str(info.value) and "start the sequence again" in str(info.value)
    assert "0 s it had to run the requests already queued ran out" in str(info.value)
    assert len(runner.feeds) == 2  # the start and the one in its run; the others never ran


async def test_requests_queued_behind_a_start_close_refused_are_told_so() -> None:
    sb, runner, _, _ = make()
    runner.gated = True
    first = asyncio.create_task(sb.infer(5, x(1.0), adm(), start=True, end=True))
    while not runner.gates:
        await asyncio.sleep(0)
    restart = asyncio.create_task(sb.infer(5, x(2.0), adm(), start=True))
    then = asyncio.create_task(sb.infer(5, x(2.0), adm()))
    await asyncio.sleep(0)
    sb.close()
    runner.gated = False
    runner.gates[0].set()
    await first
    with pytest.raises(NotAccepting):  # to the version serving now
        await restart
    with pytest.raises(SequenceRetired, match="before the sequence_start queued ahead of it ran"):
        await then  # had been "never started"
