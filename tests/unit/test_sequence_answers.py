"""SequenceBatcher: a request whose answer cannot be delivered keeps no state, a start refused for
the sequence limits is remembered as one that did not run (bounded), and string ids are quoted in
messages (batcher/sequence.py, batcher/sequence_types.py)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from batcher.sequence import REMEMBER_RELEASED
from batcher.sequence_types import SequenceLimitReached, UnknownSequence, check_one_row, not_live
from batcher.types import Tensors
from tests.unit.test_sequence_batcher import adm, make, x


class Undeliverable(Exception):
    """What writing an answer raised (its output's shm object truncated during the run)."""


async def test_a_request_whose_answer_fails_leaves_the_state_as_it_was() -> None:
    """The answer failed after the run and the failed request's +100 had been kept: the next
    request answered 101 + 1."""
    sb, _, _, _ = make()
    await sb.infer(1, x(1), adm(), start=True)

    async def fail(outputs: Tensors) -> None:
        raise Undeliverable()

    with pytest.raises(Undeliverable):
        await sb.infer(1, x(100), adm(), answer=fail)
    assert (await sb.infer(1, x(1), adm()))["out"].tolist() == [[2, 2]]


async def test_a_start_whose_answer_fails_opens_no_sequence() -> None:
    sb, _, _, _ = make(max_sequences=1)

    async def fail(outputs: Tensors) -> None:
        raise Undeliverable()

    with pytest.raises(Undeliverable):
        await sb.infer(3, x(1), adm(), start=True, answer=fail)
    assert sb.live == 0 and sb.state_bytes == 0


async def test_the_answer_gets_the_outputs_without_the_state_before_the_state_is_kept() -> None:
    sb, _, _, _ = make()
    seen: list[Tensors] = []

    async def keep(outputs: Tensors) -> None:
        seen.append(outputs)

    await sb.infer(1, x(2), adm(), start=True, answer=keep)
    assert [sorted(o) for o in seen] == [["out"]] and seen[0]["out"].tolist() == [[2, 2]]
    assert (await sb.infer(1, x(1), adm()))["out"].tolist() == [[3, 3]]


async def test_a_continuation_of_a_start_refused_for_max_sequences_is_told_it_did_not_run() -> None:
    """It was told "it was never started", though its start had been sent and refused."""
    sb, _, _, _ = make(max_sequences=1)
    await sb.infer(1, x(1), adm(), start=True)
    with pytest.raises(SequenceLimitReached, match="max_sequences=1"):
        await sb.infer(2, x(1), adm(), start=True)
    with pytest.raises(
        UnknownSequence, match=r"its sequence_start request did not run \(it was refused: max_sequences=1"
    ):
        await sb.infer(2, x(1), adm())


async def test_a_continuation_of_a_start_refused_for_state_bytes_is_told_it_did_not_run() -> None:
    sb, _, _, _ = make(max_sequences=10, max_bytes=8)  # 8 bytes a sequence: one fits
    await sb.infer(1, x(1), adm(), start=True)
    with pytest.raises(SequenceLimitReached, match="max_sequence_state_bytes=8"):
        await sb.infer(2, x(1), adm(), start=True)
    with pytest.raises(UnknownSequence, match=r"did not run \(it was refused: max_sequence_state_bytes=8"):
        await sb.infer(2, x(1), adm())


async def test_refused_starts_are_remembered_in_bounded_memory() -> None:
    sb, _, _, _ = make(max_sequences=1)
    await sb.infer(0, x(1), adm(), start=True)
    for sid in range(1, REMEMBER_RELEASED + 50):
        with pytest.raises(SequenceLimitReached):
            await sb.infer(sid, x(1), adm(), start=True)
    remembered = sb.released()
    assert len(remembered) == REMEMBER_RELEASED and next(reversed(remembered)) == REMEMBER_RELEASED + 49
    with pytest.raises(UnknownSequence, match="never started"):  # the oldest forgotten
        await sb.infer(1, x(1), adm())


async def test_a_started_sequence_forgets_its_refused_start() -> None:
    sb, _, _, _ = make(max_sequences=1)
    await sb.infer(1, x(1), adm(), start=True)
    with pytest.raises(SequenceLimitReached):
        await sb.infer(2, x(1), adm(), start=True)
    await sb.infer(1, x(1), adm(), end=True)
    await sb.infer(2, x(1), adm(), start=True)
    assert not sb.remembers(2) and (await sb.infer(2, x(1), adm()))["out"].tolist() == [[2, 2]]


@pytest.mark.parametrize(
    ("sid", "named"), [(5, "sequence 5 "), ("5", "sequence '5' "), ("x y'z", 'sequence "x y\'z" ')]
)
def test_messages_quote_a_string_sequence_id(sid: int | str, named: str) -> None:
    """String id "5" had read as integer 5, "x y'z" as `sequence x y'z`."""
    assert named in str(not_live("m", sid, "why"))
    with pytest.raises(Exception, match=named.replace("'", ".").rstrip() + ":"):
        check_one_row("m", sid, 2)


class Growing:
    """A runner whose state output grows to 2 * x floats (8 bytes a float pair: x(2) is 16 bytes)."""

    async def enqueue(self, inputs: Tensors, a: object, trace: object = None) -> Tensors:
        out = np.zeros((1, 2 * int(inputs["x"][0, 0])), np.float32)
        return {"out": out[:, :2], "acc_out": out}


async def test_state_growth_waiting_for_its_answer_counts_against_the_limit() -> None:
    """Checked before the answer, kept after it: another sequence passed its check against the old
    total meanwhile, and both kept theirs (32 bytes held under a 24-byte limit; a reviewer)."""
    sb, _, _, _ = make(max_sequences=4, max_bytes=24)
    sb._runner = Growing()
    await sb.infer(1, x(1), adm(), start=True)
    await sb.infer(2, x(1), adm(), start=True)
    gate, entered = asyncio.Event(), asyncio.Event()

    async def slow(outputs: Tensors) -> None:
        entered.set()
        await gate.wait()

    first = asyncio.create_task(sb.infer(1, x(2), adm(), answer=slow))
    await entered.wait()  # its 16 bytes checked, its answer being written
    with pytest.raises(SequenceLimitReached, match="max_sequence_state_bytes=24"):
        await sb.infer(2, x(2), adm())
    gate.set()
    await first
    assert sb.state_bytes <= 24


async def test_a_start_that_ran_but_could_not_answer_says_so_to_its_continuation() -> None:
    sb, _, _, _ = make()

    async def fail(outputs: Tensors) -> None:
        raise Undeliverable()

    with pytest.raises(Undeliverable):
        await sb.infer(4, x(1), adm(), start=True, answer=fail)
    with pytest.raises(UnknownSequence, match="its sequence_start request's answer could not be delivered"):
        await sb.infer(4, x(1), adm())  # it had been told the start "did not run"
