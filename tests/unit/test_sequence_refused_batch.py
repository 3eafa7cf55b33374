"""A SequenceBatcher over a real DynamicBatcher whose backend refuses any run holding a zero
(InputsRefused, as the server's division guard does): one sequence's step refused in a batch it
shares with other sequences' steps fails alone (the batch's halves are run again,
batcher/run_batch.py), its sequence's state stays as it was, and the others advance once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest

from batcher import BatchingPolicy, DynamicBatcher, ModelStats, Tensors
from batcher.errors import InputsRefused
from batcher.sequence import SequenceBatcher
from batcher.sequence_types import SequenceLimits, SequenceSpec, StateSpec, UnknownSequence

LONG = 5.0  # an upper bound no healthy run comes near
SEQUENCES = 4  # max_batch_size: a batch runs as soon as one step of each has arrived


class ZeroRefused(InputsRefused):
    """The backend's refusal of a run holding a zero."""


class AccumulatingBackend:
    """out = acc + x, acc_out the same; a run holding a zero in x is refused. Records each run's x."""

    def __init__(self) -> None:
        self.runs: list[list[float]] = []

    async def run(self, inputs: Tensors) -> Tensors:
        x = inputs["x"]
        self.runs.append(x[:, 0].tolist())
        if (x == 0).any():
            raise ZeroRefused("a zero in x")
        out = np.add(inputs["acc"], x)
        return {"out": out, "acc_out": out.copy()}


@pytest.fixture
async def runner() -> AsyncIterator[tuple[DynamicBatcher, AccumulatingBackend]]:
    backend = AccumulatingBackend()
    # So long a delay that the steps sent together always share one batch (it runs when full).
    policy = BatchingPolicy(max_batch_size=SEQUENCES, max_queue_delay_s=LONG)
    batcher = DynamicBatcher([backend], policy, ModelStats())
    batcher.start()
    yield batcher, backend
    await batcher.stop(drain=False, timeout_s=0.1)


def sequences(runner: DynamicBatcher) -> SequenceBatcher:
    initial = np.zeros((1, 2), np.float32)
    initial.flags.writeable = False
    spec = SequenceSpec((), (StateSpec("acc", "acc_out", initial),), 60.0)
    return SequenceBatcher(runner, spec, SequenceLimits(SEQUENCES, 1 << 20), model="m")


async def one_step(
    seqs: SequenceBatcher, runner: DynamicBatcher, values: list[float], *, start: bool = False
) -> list[np.ndarray | BaseException]:
    """Sequence i's request of value values[i], all sent together: each one's answer or error."""
    steps = [
        seqs.infer(sid, {"x": np.full((1, 2), value, np.float32)}, runner.admission(1), start=start)
        for sid, value in enumerate(values, start=1)
    ]
    answers = await asyncio.wait_for(asyncio.gather(*steps, return_exceptions=True), 2 * LONG)
    return [a if isinstance(a, BaseException) else a["out"][0, 0] for a in answers]


async def test_a_refused_step_fails_alone_and_leaves_its_sequence_state_as_it_was(
    runner: tuple[DynamicBatcher, AccumulatingBackend],
) -> None:
    dynamic, backend = runner
    seqs = sequences(dynamic)
    assert await one_step(seqs, dynamic, [1, 2, 3, 4], start=True) == [1, 2, 3, 4]
    answers = await one_step(seqs, dynamic, [10, 20, 0, 40])
    assert isinstance(answers[2], ZeroRefused)
    assert answers[:2] + answers[3:] == [11, 22, 44]
    # Each state advanced once, the refused one's not at all.
    assert await one_step(seqs, dynamic, [100, 100, 100, 100]) == [111, 122, 103, 144]
    assert backend.runs[1:4] == [[10, 20, 0, 40], [10, 20], [0, 40]]  # halves, not the whole again


async def test_a_refused_start_opens_no_sequence_and_the_others_start(
    runner: tuple[DynamicBatcher, AccumulatingBackend],
) -> None:
    dynamic, _ = runner
    seqs = sequences(dynamic)
    answers = await one_step(seqs, dynamic, [1, 0, 3, 4], start=True)
    assert isinstance(answers[1], ZeroRefused)
    assert answers[:1] + answers[2:] == [1, 3, 4]
    assert [seqs.is_live(sid) for sid in (1, 2, 3, 4)] == [True, False, True, True]
    with pytest.raises(UnknownSequence):
        await seqs.infer(2, {"x": np.full((1, 2), 5, np.float32)}, dynamic.admission(1))
