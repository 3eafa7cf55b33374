"""SequenceBatcher rules that the whole-scope mutation run of 2026-12-05 (session 48) showed untested
(batcher/sequence.py): the byte count of state growth still being answered (`_growing`) across
failures, answers and other sequences, the routing told once per id that is gone, a run stopped
under an open or a closed version, the drain's wait, and the messages that name the sequence and
model. Fakes from test_sequence_batcher.py and test_mutants_sequence_s46.py."""

from __future__ import annotations

import asyncio

import pytest

from batcher.errors import BatcherStopped, NotAccepting
from batcher.sequence import SequenceBatcher
from batcher.sequence_types import (
    SequenceError,
    SequenceLimitReached,
    SequenceLimits,
    SequenceRetired,
    UnknownSequence,
)
from batcher.types import Tensors
from tests.unit.test_mutants_sequence import until
from tests.unit.test_mutants_sequence_s46 import growing_spec, held, make_held
from tests.unit.test_sequence_batcher import Clock, FakeRunner, FakeTimers, adm, make, x
from tests.unit.test_sequence_close import queued_behind_a_gated_run

WHY = "the model version serving it was replaced by version 2"
LONG = 5.0  # a bound on waits that end at once when all is well


def growing(max_state_bytes: int) -> tuple[SequenceBatcher, FakeRunner]:
    """A batcher whose sequences start with 4 state bytes and hold 8 once they have run."""
    runner = FakeRunner()
    sb = SequenceBatcher(
        runner,
        growing_spec(),
        SequenceLimits(4, max_state_bytes),
        model="m",
        clock=Clock(),
        schedule=FakeTimers(),
    )
    return sb, runner


class HeldAnswer:
    """An `answer` that waits for `gate` once reached: its run's state growth is still being
    counted meanwhile (`entered` says it is there)."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.entered = False

    async def __call__(self, outputs: Tensors) -> None:
        self.entered = True
        await self.gate.wait()


async def refuse(outputs: Tensors) -> None:
    raise OSError("the stream closed before the answer was written")


async def test_a_request_of_several_rows_is_refused_naming_its_sequence() -> None:
    sb, _, _, _ = make()
    with pytest.raises(SequenceError) as refused:
        await sb.infer(7, x(1), adm(rows=2), start=True)
    assert str(refused.value) == (
        "inference request to model 'm' must specify batch-size 1 due to requirements of sequence "
        "batcher (sequence 7: got 2 rows)"
    )


async def test_a_start_cancelled_while_waiting_for_its_turn_tells_the_routing_its_id_is_gone() -> None:
    """The sequence was released while a request of it ran; a new start of its id, cancelled before
    its turn came, opened nothing: the routing hears of the id again (it had kept a note of a
    sequence that does not exist). The mutant's start value for `seq` (not None) skipped that."""
    sb, runner, rules = make_held()
    gone: list[object] = []
    sb.on_gone = gone.append
    runner.gated = True
    first = asyncio.create_task(sb.infer(1, x(1), adm(), start=True))
    await until(lambda: len(runner.gates) == 1)
    assert sb.release(1, "its stream ended") and gone == [1]
    restart = asyncio.create_task(sb.infer(1, x(2), adm(), start=True))
    await held(rules, 1, restart)  # waiting for its turn
    restart.cancel()
    with pytest.raises(asyncio.CancelledError):
        await restart
    assert gone == [1, 1] and not sb.is_live(1)
    runner.gated = False
    runner.gates[0].set()
    assert (await first)["out"].tolist() == [[1, 1]]
    assert gone == [1, 1]  # the request that ran had opened the sequence: nothing more to tell


async def test_an_ended_sequence_is_told_to_the_routing_once() -> None:
    """Only a start that opened nothing adds a second note; an end (released, then the request
    ends with its id not live) and a refused continuation add none."""
    sb, _, _, _ = make()
    gone: list[object] = []
    sb.on_gone = gone.append
    await sb.infer(7, x(1), adm(), start=True)
    await sb.infer(7, x(1), adm(), end=True)
    assert gone == [7]
    with pytest.raises(UnknownSequence):
        await sb.infer(9, x(1), adm())
    assert gone == [7]


async def test_a_continuation_left_waiting_when_the_drain_ran_out_names_its_sequence_and_model() -> None:
    sb, runner, _, _ = make()
    tasks = await queued_behind_a_gated_run(sb, runner, 1, 2)
    sb.close(WHY)
    await sb.drain(0.0)
    runner.gated = False
    runner.gates[0].set()
    assert (await tasks[0])["out"].tolist() == [[2, 2]]
    with pytest.raises(SequenceRetired) as retired:
        await tasks[1]
    assert str(retired.value) == (
        f"sequence 1 of model 'm' ended while this request waited for its turn: {WHY}, and the 0 s "
        "it had to run the requests already queued ran out (the server's shutdown_grace_s); the "
        "request was not run: start the sequence again (sequence_start)"
    )


async def test_a_run_stopped_after_the_close_is_answered_as_retired_with_the_close_reason() -> None:
    """The close kept the sequence for the request in its run; the runner then stopped it
    (BatcherStopped): the caller hears its sequence, model and the reason the version went (the
    turn has no reason of its own: the mutant `turn.retired and why` said None)."""
    sb, runner, _, _ = make()
    tasks = await queued_behind_a_gated_run(sb, runner, 1, 1)
    sb.close(WHY)
    runner.fail_next = BatcherStopped("the model's batcher stopped")
    runner.gates[0].set()
    with pytest.raises(SequenceRetired) as retired:
        await tasks[0]
    assert str(retired.value) == (
        f"sequence 1 of model 'm' ended while this request waited for its turn: {WHY}; the request "
        "was not run: start the sequence again (sequence_start)"
    )


async def test_a_run_stopped_while_the_version_is_open_raises_the_runners_error_as_is() -> None:
    """Not closed: a BatcherStopped from the runner is not a retired sequence (the mutant `or`
    made it one); the sequence stays live with its state."""
    sb, runner, _, _ = make()
    await sb.infer(1, x(1), adm(), start=True)
    stopped = BatcherStopped("the model's batcher stopped")
    runner.fail_next = stopped
    with pytest.raises(BatcherStopped) as raised:
        await sb.infer(1, x(2), adm())
    assert raised.value is stopped
    assert sb.is_live(1) and (await sb.infer(1, x(2), adm()))["out"].tolist() == [[3, 3]]


async def test_a_start_after_the_close_is_refused_naming_its_sequence() -> None:
    sb, _, _, _ = make()
    sb.close(WHY)
    with pytest.raises(NotAccepting) as refused:
        await sb.infer(5, x(1), adm(), start=True)
    assert str(refused.value) == (
        "sequence 5: the version of model 'm' it was sent to was unloaded or replaced before its "
        "sequence_start ran"
    )


async def test_a_state_that_outgrows_the_limit_is_refused_naming_its_sequence() -> None:
    sb, _ = growing(7)  # 4 bytes fit; the 8 it grows to do not
    with pytest.raises(SequenceLimitReached) as refused:
        await sb.infer(3, x(1), adm(), start=True)
    assert str(refused.value) == (
        "model 'm': sequence 3's state grew to 8 bytes, past max_sequence_state_bytes=7; the "
        "sequence was released"
    )
    assert sb.live == 0 and sb.state_bytes == 0


async def test_a_start_whose_answer_failed_leaves_no_growth_counted() -> None:
    """The start ran (its state grew by 4 bytes, counted while it was answered) but its answer
    failed: the growth is taken back. A next sequence then fits exactly (8 of 8); with the growth
    still counted (`=`, `+=`, `-= 0` for `-=`) its run was refused."""
    sb, _ = growing(8)
    with pytest.raises(OSError, match="the stream closed"):
        await sb.infer(1, x(1), adm(), start=True, answer=refuse)
    assert sb.live == 0 and sb.state_bytes == 0
    assert (await sb.infer(2, x(1), adm(), start=True))["out"].tolist() == [[1, 1]]
    assert sb.state_bytes == 8


async def test_a_failed_run_leaves_the_counted_bytes_as_they_were() -> None:
    """A run that failed had no state to keep: nothing is taken from the growth counted (the mutant
    took 1 byte, so a second 8-byte sequence then fit a 15-byte limit)."""
    sb, runner, _, _ = make(max_bytes=15)
    await sb.infer(1, x(1), adm(), start=True)
    runner.fail_next = RuntimeError("the run failed")
    with pytest.raises(RuntimeError, match="the run failed"):
        await sb.infer(1, x(2), adm())
    assert sb.state_bytes == 8
    with pytest.raises(SequenceLimitReached, match="would pass max_sequence_state_bytes=15 "):
        await sb.infer(2, x(1), adm(), start=True)


async def test_a_start_counts_the_growth_of_a_state_still_being_answered() -> None:
    """Sequence 1's run grew its state 4 -> 8 bytes and its answer is being written: 4 held and 4
    growing. A new sequence's 4 would make 12, past 11 (the mutant subtracted the growth: 4)."""
    sb, _ = growing(11)
    answer = HeldAnswer()
    first = asyncio.create_task(sb.infer(1, x(1), adm(), start=True, answer=answer))
    await until(lambda: answer.entered)
    with pytest.raises(SequenceLimitReached) as refused:
        await sb.infer(2, x(1), adm(), start=True)
    assert str(refused.value) == (
        "model 'm': a new sequence's 4 state bytes would pass max_sequence_state_bytes=11 (4 held)"
    )
    answer.gate.set()
    assert (await first)["out"].tolist() == [[1, 1]] and sb.state_bytes == 8


async def test_another_sequences_run_keeps_the_growth_still_being_answered_counted() -> None:
    """Sequence 2's answer is being written (its 4 bytes of growth counted); sequence 1 runs and is
    answered meanwhile, without growth. Sequence 2's growth is still counted: a third start is
    refused (12 held + 4 growing + 4 > 16). The mutants set the count to sequence 1's own growth
    (0) instead of adding or subtracting it, and the third start fitted."""
    sb, _ = growing(16)
    await sb.infer(1, x(1), adm(), start=True)  # 8 bytes
    answer = HeldAnswer()
    second = asyncio.create_task(sb.infer(2, x(1), adm(), start=True, answer=answer))
    await until(lambda: answer.entered)
    assert sb.state_bytes == 12
    assert (await sb.infer(1, x(1), adm()))["out"].tolist() == [[2, 2]]  # 8 -> 8 bytes
    with pytest.raises(SequenceLimitReached, match=r"max_sequence_state_bytes=16 \(12 held\)"):
        await sb.infer(3, x(1), adm(), start=True)
    answer.gate.set()
    assert (await second)["out"].tolist() == [[1, 1]] and sb.state_bytes == 16


async def test_a_run_that_does_not_grow_its_state_counts_no_growth_while_answered() -> None:
    """Sequence 1 (8 bytes) runs again to 8 bytes while its answer is written: no growth, so a
    second sequence fits exactly (16 of 16). Growth counted as at least 1 byte, or as old + new
    bytes, refused it."""
    sb, _, _, _ = make(max_bytes=16)
    await sb.infer(1, x(1), adm(), start=True)
    answer = HeldAnswer()
    continued = asyncio.create_task(sb.infer(1, x(1), adm(), answer=answer))
    await until(lambda: answer.entered)
    assert (await sb.infer(2, x(5), adm(), start=True))["out"].tolist() == [[5, 5]]
    answer.gate.set()
    assert (await continued)["out"].tolist() == [[2, 2]] and sb.state_bytes == 16


async def test_a_drain_waits_for_the_queued_requests_even_after_an_earlier_sequence_ended() -> None:
    """A sequence ended while the version was open left none live: that is not the drain's end
    (the mutant `closed or not live` set it then, so a later drain returned at once and released
    the sequence its close had kept, failing the request still queued)."""
    sb, runner, _, _ = make()
    await sb.infer(1, x(1), adm(), start=True)
    await sb.infer(1, x(1), adm(), end=True)
    assert sb.live == 0
    tasks = await queued_behind_a_gated_run(sb, runner, 2, 2)
    sb.close(WHY)
    drain = asyncio.create_task(sb.drain(LONG))
    for _ in range(20):  # loop turns in which a drain already set would (wrongly) end
        await asyncio.sleep(0)
    assert not drain.done() and sb.live == 1
    runner.gated = False
    runner.gates[0].set()
    await asyncio.wait_for(drain, LONG)
    assert [(await t)["out"].tolist() for t in tasks] == [[[2, 2]], [[3, 3]]]
    assert sb.live == 0 and sb.released()[2] == WHY
