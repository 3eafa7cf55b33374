"""SequenceBatcher rules that mutation testing (session 46) showed untested (batcher/sequence.py):
the bytes a request waiting for its sequence's turn is held for besides its inputs (the live
sequence's state as it is now, or the initial state for an id not live, and every control input),
and the reason a drain's release leaves for late requests and the batcher that follows. Fakes from
test_sequence_batcher.py."""

from __future__ import annotations

import asyncio
from collections import OrderedDict

import numpy as np
import pytest

from batcher.admission import Admission
from batcher.errors import DeadlineExceeded
from batcher.sequence import SequenceBatcher
from batcher.sequence_types import (
    ControlKind,
    ControlSpec,
    SequenceLimits,
    SequenceSpec,
    StateSpec,
    UnknownSequence,
)
from batcher.types import Tensors
from tests.unit.test_mutants_sequence import until
from tests.unit.test_sequence_batcher import IDLE_S, Clock, FakeRunner, FakeTimers, adm, make, x
from tests.unit.test_sequence_close import queued_behind_a_gated_run

# One row's control inputs, each of its own size: 4 + 4 + 1 + 8 bytes.
CONTROLS = (
    ControlSpec("START", ControlKind.START, np.dtype(np.int32)),
    ControlSpec("END", ControlKind.END, np.dtype(np.float32)),
    ControlSpec("READY", ControlKind.READY, np.dtype(np.int8)),
    ControlSpec("CORRID", ControlKind.CORRID, np.dtype(np.int64)),
)
CONTROL_BYTES = 4 + 4 + 1 + 8
INITIAL_BYTES = 4  # one float32: the state grows to two (x's shape) once the sequence has run
GROWN_BYTES = 8


class HoldRecorder:
    """TurnDeadlines that record what a request waiting for its turn is held for (no deadlines)."""

    def __init__(self) -> None:
        self.holds: list[tuple[list[str], int]] = []  # (its input names, the extra bytes)
        self.released: list[int] = []

    def give_up_at(self, a: Admission, now: float) -> float | None:
        return None

    def gave_up(self, a: Admission, now: float, where: str) -> DeadlineExceeded:
        raise AssertionError("no request here has a deadline")

    def cut(self, a: Admission, now: float) -> None:
        pass

    def hold(self, inputs: Tensors, a: Admission, extra: int = 0) -> int:
        self.holds.append((sorted(inputs), extra))
        return 1000 + len(self.holds)  # a token, given back by `release`

    def release(self, nbytes: int) -> None:
        self.released.append(nbytes)


def growing_spec() -> SequenceSpec:
    initial = np.zeros((1, 1), np.float32)  # acc + x broadcasts it to x's (1, 2) after a run
    initial.flags.writeable = False
    return SequenceSpec(CONTROLS, (StateSpec("acc", "acc_out", initial),), IDLE_S)


def make_held() -> tuple[SequenceBatcher, FakeRunner, HoldRecorder]:
    runner, rules = FakeRunner(), HoldRecorder()
    sb = SequenceBatcher(
        runner,
        growing_spec(),
        SequenceLimits(4, 1024),
        model="m",
        clock=Clock(),
        schedule=FakeTimers(),
        deadlines=rules,
    )
    return sb, runner, rules


async def one_running(sb: SequenceBatcher, runner: FakeRunner) -> asyncio.Task[Tensors]:
    """Sequence 1 started (its state grown to 8 bytes), then a continuation held in its run."""
    await sb.infer(1, x(1), adm(), start=True)
    assert sb.state_bytes == GROWN_BYTES
    runner.gated = True
    running = asyncio.create_task(sb.infer(1, x(1), adm()))
    await until(lambda: len(runner.gates) == 1)
    return running


async def held(rules: HoldRecorder, n: int, *waiting: asyncio.Task[Tensors]) -> None:
    """Until `n` holds are recorded; a waiting request that ended instead raises its error here."""
    await until(lambda: len(rules.holds) >= n or any(t.done() for t in waiting))
    for task in waiting:
        if task.done():
            task.result()  # (what working out its hold raised, say)
            raise AssertionError("a request meant to wait for its turn was answered")


async def test_a_request_behind_its_live_sequences_run_is_held_for_the_state_as_it_is_now() -> None:
    sb, runner, rules = make_held()
    running = await one_running(sb, runner)
    assert rules.holds == []  # none of its id was ahead of the first two: nothing held
    waiting = asyncio.create_task(sb.infer(1, x(2), adm()))
    await held(rules, 1, waiting)
    # The grown state (8 bytes, not the initial 4) and the four control inputs (17 bytes).
    assert rules.holds == [(["x"], GROWN_BYTES + CONTROL_BYTES)]
    assert rules.released == []  # held while it waits
    runner.gated = False
    runner.gates[0].set()
    assert (await running)["out"].tolist() == [[2, 2]]
    assert (await waiting)["out"].tolist() == [[4, 4]]
    assert rules.released == [1001]  # given back once its turn came
    assert len(rules.holds) == 1


async def test_a_start_behind_a_released_sequences_run_is_held_for_the_initial_state() -> None:
    """The sequence was released (its stream ended) while a request of it ran: a start of its id,
    queued behind that run, is held for the state it will be fed (the initial one) and the controls
    of a row of its id (the correlation id's tensor among them)."""
    sb, runner, rules = make_held()
    running = await one_running(sb, runner)
    assert sb.release(1, "its stream ended")
    assert not sb.is_live(1) and sb.state_bytes == 0
    restart = asyncio.create_task(sb.infer(1, x(5), adm(), start=True))
    await held(rules, 1, restart)  # it waits for its turn (working out what to hold did not fail)
    assert rules.holds == [(["x"], INITIAL_BYTES + CONTROL_BYTES)]
    runner.gated = False
    runner.gates[0].set()
    assert (await running)["out"].tolist() == [[2, 2]]  # answered; its state was not kept
    assert (await restart)["out"].tolist() == [[5, 5]]  # from the initial state
    assert rules.released == [1001] and sb.is_live(1) and sb.state_bytes == GROWN_BYTES
    fed = runner.feeds[-1]
    assert fed["CORRID"].tolist() == [[1]] and fed["START"].tolist() == [[1]]


async def test_requests_behind_one_are_each_held_for_the_same_live_state() -> None:
    """Two requests queued behind one run: each is held for the state and controls when it
    arrives, and each hold is given back when its own turn comes (in arrival order)."""
    sb, runner, rules = make_held()
    running = await one_running(sb, runner)
    second = asyncio.create_task(sb.infer(1, x(2), adm()))
    third = asyncio.create_task(sb.infer(1, x(3), adm(), end=True))
    await held(rules, 2, second, third)
    assert [extra for _, extra in rules.holds] == [GROWN_BYTES + CONTROL_BYTES] * 2
    runner.gated = False
    runner.gates[0].set()
    results = [(await t)["out"][0, 0] for t in (running, second, third)]
    assert results == [2, 4, 7]
    assert rules.released == [1001, 1002] and sb.live == 0 and sb.state_bytes == 0


LONG = 5.0  # a bound on waits that end at once when all is well
WHY = "the model version serving it was replaced by version 2"


async def test_a_drain_that_ran_out_remembers_why_the_version_went() -> None:
    """The drain's grace ran out with a sequence still live: it is released for the reason the
    version was closed with, which late requests and the batcher that follows are told."""
    sb, runner, _, _ = make()
    gone: list[object] = []
    sb.on_gone = gone.append
    tasks = await queued_behind_a_gated_run(sb, runner, 1, 1)
    sb.close(WHY)
    assert sb.released() == OrderedDict([(1, WHY)]) and sb.live == 1
    await sb.drain(0.0)
    assert sb.live == 0 and sb.state_bytes == 0
    assert sb.released() == OrderedDict([(1, WHY)])  # the drain's release keeps the reason
    assert gone == [1]  # told once, at the close
    runner.gated = False
    runner.gates[0].set()
    assert (await tasks[0])["out"].tolist() == [[2, 2]]  # in its run already: answered, state not kept
    assert sb.live == 0 and sb.released() == OrderedDict([(1, WHY)])
    with pytest.raises(UnknownSequence) as late:
        await asyncio.wait_for(sb.infer(1, x(1.0), adm()), LONG)
    assert str(late.value) == (
        "inference request for sequence 1 to model 'm' must specify the START flag on the first "
        f"request of the sequence (sequence_start): it is not live: {WHY}"
    )
    follower, _, _, _ = make()
    follower.remember(sb.released())
    with pytest.raises(UnknownSequence, match=f"it is not live: {WHY}$"):
        await follower.infer(1, x(1.0), adm())


async def test_a_drain_releases_every_sequence_it_kept_with_the_close_reason() -> None:
    sb, runner, _, _ = make()
    first = await queued_behind_a_gated_run(sb, runner, 1, 1)
    runner.gated = False
    await sb.infer(2, x(1.0), adm(), start=True)  # idle when the close ran: released by the close
    runner.gated = True
    second = asyncio.create_task(sb.infer(3, x(1.0), adm(), start=True))
    await until(lambda: len(runner.gates) == 2)
    sb.close(WHY)
    assert sb.live == 2
    await sb.drain(0.0)
    assert sb.live == 0 and sb.released() == OrderedDict([(2, WHY), (1, WHY), (3, WHY)])
    for gate in runner.gates:
        gate.set()
    assert (await first[0])["out"].tolist() == [[2, 2]] and (await second)["out"].tolist() == [[1, 1]]
    assert sb.live == 0 and sb.state_bytes == 0  # their states were not kept
