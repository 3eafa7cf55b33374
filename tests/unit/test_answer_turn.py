"""answer_turn: a preserve_ordering answer waits for the one ahead within its own deadline, and an
answer that misses its turn is counted where its success would have been (server/protocol)."""

from __future__ import annotations

import asyncio
import time

import pytest

from batcher.errors import ComputedThenCancelled
from batcher.stats import ModelStats
from server.protocol.answer_turn import LateForTurn, count_missed, wait_turn, when_set
from server.protocol.stream_order import AllOf


async def test_the_wait_ends_when_the_answer_ahead_is_out() -> None:
    ahead = asyncio.Event()
    waiting = asyncio.create_task(wait_turn(ahead, time.monotonic() + 60))
    await asyncio.sleep(0)
    assert not waiting.done()
    ahead.set()
    await waiting  # no LateForTurn
    await wait_turn(AllOf([ahead]), time.monotonic() - 1)  # out already: a past deadline is no matter


async def test_a_deadline_that_passes_first_is_late_for_turn() -> None:
    with pytest.raises(LateForTurn, match="preserve_ordering"):
        await wait_turn(asyncio.Event(), time.monotonic() - 1)  # over already
    with pytest.raises(LateForTurn):
        await wait_turn(asyncio.Event(), time.monotonic() + 0.01)


def test_late_for_turn_counts_late_and_a_failure_not_a_success() -> None:
    stats = ModelStats()
    exc = LateForTurn()
    assert count_missed(stats, 5, exc, None) is exc
    assert (stats.late, stats.fail.count, stats.success.count) == (1, 1, 0)
    assert stats.failures["REJECTED"] == 1  # a deadline miss, as the queue's


def test_a_call_cut_at_its_deadline_counts_late_and_one_whose_caller_went_a_success() -> None:
    cut = ModelStats()
    exc = asyncio.CancelledError()
    assert count_missed(cut, 5, exc, time.monotonic() - 1) is exc  # gRPC cut it at its deadline
    assert (cut.late, cut.fail.count, cut.success.count) == (1, 1, 0)
    gone = ModelStats()
    raised = count_missed(gone, 5, asyncio.CancelledError(), time.monotonic() + 60)
    assert isinstance(raised, ComputedThenCancelled)  # computed: the stream counts it unsent
    assert (gone.late, gone.fail.count, gone.success.count) == (0, 0, 1)


async def test_when_set_waits_for_the_answer_ahead() -> None:
    ahead, done = asyncio.Event(), asyncio.Event()
    when_set(ahead, done.set)
    await asyncio.sleep(0)
    assert not done.is_set()
    ahead.set()
    await asyncio.wait_for(done.wait(), 5)
    later = asyncio.Event()
    when_set(ahead, later.set)  # ahead is out already: at once
    assert later.is_set()
