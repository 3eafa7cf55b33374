"""SequenceBatcher's rules that mutation testing showed untested (batcher/sequence.py): a live
restart, the turn bookkeeping when requests queue and one is cancelled, what reaches the runner,
the timers' delays, close(), the limits at their boundaries, the state copy and its byte count, the
released ids remembered, and the correlation id's tensor. Fakes from test_sequence_batcher.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
import pytest

from batcher.admission import Admission
from batcher.sequence import REMEMBER_RELEASED, SequenceBatcher
from batcher.sequence_types import (
    ControlKind,
    ControlSpec,
    SequenceError,
    SequenceLimitReached,
    SequenceLimits,
    SequenceSpec,
    StateSpec,
    UnknownSequence,
)
from batcher.types import QueueTrace, Tensors
from tests.unit.test_sequence_batcher import IDLE_S, FakeRunner, FakeTimers, adm, make, spec, x


def live_delays(timers: FakeTimers) -> list[float]:
    return [delay for delay, _, timer in timers.pending if not timer.cancelled]


async def until(condition: Callable[[], bool]) -> None:
    """Yield to the loop until `condition` holds (bounded: no test waits on time)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


async def test_a_start_on_a_live_sequence_restarts_it_from_the_initial_state() -> None:
    sb, runner, _, _ = make()
    await sb.infer(4, x(1), adm(), start=True)
    await sb.infer(4, x(2), adm())  # state 3
    assert (await sb.infer(4, x(5), adm(), start=True))["out"].tolist() == [[5, 5]]
    assert runner.feeds[-1]["acc"].tolist() == [[0, 0]]
    assert sb.live == 1 and sb.state_bytes == 8
    assert (await sb.infer(4, x(1), adm()))["out"].tolist() == [[6, 6]]


async def test_the_runner_gets_the_requests_admission_and_trace() -> None:
    seen: list[tuple[Admission, QueueTrace | None]] = []

    class Recording(FakeRunner):
        async def enqueue(self, inputs: Tensors, a: Admission, trace: QueueTrace | None = None) -> Tensors:
            seen.append((a, trace))
            return await super().enqueue(inputs, a, trace)

    sb = SequenceBatcher(Recording(), spec(), SequenceLimits(4, 1024), model="m", schedule=FakeTimers())
    a, trace = adm(), QueueTrace()
    await sb.infer(1, x(1), a, start=True, trace=trace)
    assert len(seen) == 1 and seen[0][0] is a and seen[0][1] is trace


async def test_requests_queued_behind_one_keep_one_turn_until_the_last_is_answered() -> None:
    sb, runner, _, _ = make()
    runner.gated = True
    first = asyncio.create_task(sb.infer(1, x(1), adm(), start=True))
    second = asyncio.create_task(sb.infer(1, x(2), adm()))
    third = asyncio.create_task(sb.infer(1, x(3), adm()))
    await until(lambda: len(runner.gates) == 1)
    runner.gates[0].set()
    await first
    await until(lambda: len(runner.gates) == 2)  # the second runs; the third waits for its turn
    fourth = asyncio.create_task(sb.infer(1, x(4), adm()))  # arrives now: behind the third
    for _ in range(20):
        await asyncio.sleep(0)
    assert runner.most_running == 1 and len(runner.feeds) == 2
    runner.gated = False
    runner.gates[1].set()
    results = [r["out"][0, 0] for r in await asyncio.gather(second, third, fourth)]
    assert results == [3, 6, 10] and [f["x"][0, 0] for f in runner.feeds] == [1, 2, 3, 4]


async def test_a_request_cancelled_while_waiting_for_its_turn_ends_cancelled() -> None:
    sb, runner, _, timers = make()
    runner.gated = True
    first = asyncio.create_task(sb.infer(1, x(1), adm(), start=True))
    waiting = asyncio.create_task(sb.infer(1, x(2), adm()))
    await until(lambda: len(runner.gates) == 1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    runner.gated = False
    runner.gates[0].set()
    assert (await first)["out"].tolist() == [[1, 1]]
    assert (await sb.infer(1, x(2), adm()))["out"].tolist() == [[3, 3]]  # the sequence goes on
    assert live_delays(timers) == [IDLE_S]


async def test_a_request_cancelled_as_its_turn_comes_ends_cancelled_and_leaves_no_turn() -> None:
    """Cancelled after the request before it let go of the sequence, before it took its turn: it
    never saw the sequence, and it was the last holder of the turn."""
    victim: list[asyncio.Task[Tensors]] = []

    class CancelOnReturn(FakeRunner):
        async def enqueue(self, inputs: Tensors, a: Admission, trace: QueueTrace | None = None) -> Tensors:
            out = await super().enqueue(inputs, a, trace)
            if victim:  # runs before the waiting request is woken by the lock's release
                asyncio.get_running_loop().call_soon(victim.pop().cancel)
            return out

    runner, timers = CancelOnReturn(), FakeTimers()
    sb = SequenceBatcher(runner, spec(), SequenceLimits(4, 1024), model="m", schedule=timers)
    runner.gated = True
    first = asyncio.create_task(sb.infer(1, x(1), adm(), start=True))
    waiting = asyncio.create_task(sb.infer(1, x(2), adm()))
    await until(lambda: len(runner.gates) == 1)
    victim.append(waiting)
    runner.gated = False
    runner.gates[0].set()
    assert (await first)["out"].tolist() == [[1, 1]]
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert len(runner.feeds) == 1
    assert (await sb.infer(1, x(2), adm()))["out"].tolist() == [[3, 3]]


async def test_each_answered_request_arms_the_idle_timer_for_the_full_timeout() -> None:
    sb, runner, clock, timers = make()
    runner.gated = True
    first = asyncio.create_task(sb.infer(1, x(1), adm(), start=True))
    await until(lambda: len(runner.gates) == 1)
    assert live_delays(timers) == [IDLE_S]  # armed when the sequence opened
    runner.gated = False
    runner.gates[0].set()
    await first
    assert live_delays(timers) == [IDLE_S]
    clock.now += 1.0
    await sb.infer(1, x(1), adm())
    assert live_delays(timers) == [IDLE_S]  # re-armed, the earlier timer cancelled
    clock.now += IDLE_S
    timers.fire()
    assert sb.live == 0


async def test_close_releases_every_sequence_and_its_timer() -> None:
    sb, _, _, timers = make()
    await sb.infer(1, x(1), adm(), start=True)
    await sb.infer("b", x(1), adm(), start=True)
    assert sb.is_live(1) and sb.is_live("b") and not sb.is_live(2)
    sb.close()
    assert sb.live == 0 and sb.state_bytes == 0 and not sb.is_live(1)
    assert live_delays(timers) == []
    with pytest.raises(
        UnknownSequence, match=r"it is not live: the model version serving it was unloaded or replaced$"
    ):
        await sb.infer("b", x(1), adm())


async def test_the_limits_hold_exactly_at_their_bounds_and_refuse_before_running() -> None:
    sb, runner, _, _ = make(max_sequences=2, max_bytes=1024)
    await sb.infer(1, x(1), adm(), start=True)
    await sb.infer(2, x(1), adm(), start=True)
    with pytest.raises(SequenceLimitReached) as refused:
        await sb.infer(3, x(1), adm(), start=True)
    assert str(refused.value) == (
        "model 'm' holds 2 live sequences (max_sequences=2): end sequences with sequence_end, or wait "
        "for idle ones to be released"
    )
    exact, runner, _, _ = make(max_sequences=10, max_bytes=16)  # 8 bytes a sequence: two fit exactly
    await exact.infer(1, x(1), adm(), start=True)
    await exact.infer(2, x(1), adm(), start=True)
    assert exact.state_bytes == 16
    with pytest.raises(SequenceLimitReached) as refused:
        await exact.infer(3, x(1), adm(), start=True)
    assert str(refused.value) == (
        "model 'm': a new sequence's 8 state bytes would pass max_sequence_state_bytes=16 (16 held)"
    )
    assert len(runner.feeds) == 2  # refused at the door: never run


async def test_a_state_that_grows_past_the_limit_releases_its_sequence_saying_why() -> None:
    class Growing:
        """acc_out has as many float32 values as x says: the state's size is the request's."""

        async def enqueue(self, inputs: Tensors, a: Admission, trace: QueueTrace | None = None) -> Tensors:
            width = int(inputs["x"][0, 0])
            return {"out": inputs["x"], "acc_out": np.zeros((1, width), np.float32)}

    sb = SequenceBatcher(Growing(), spec(), SequenceLimits(4, 16), model="m", schedule=FakeTimers())
    await sb.infer(1, x(2), adm(), start=True)
    assert sb.state_bytes == 8
    await sb.infer(1, x(4), adm())  # 16 bytes: exactly the limit, kept
    assert sb.state_bytes == 16
    with pytest.raises(
        SequenceLimitReached, match=r"state grew to 20 bytes, past max_sequence_state_bytes=16"
    ):
        await sb.infer(1, x(5), adm())
    assert sb.live == 0 and sb.state_bytes == 0
    with pytest.raises(UnknownSequence, match=r"it is not live: its state outgrew max_sequence_state_bytes$"):
        await sb.infer(1, x(1), adm())


async def test_the_state_is_a_copy_of_the_output_and_every_state_tensor_is_counted() -> None:
    class SharedBuffer:
        """Writes each run's outputs into one buffer and returns views of it, as a batch does."""

        def __init__(self) -> None:
            self.buffer = np.zeros((1, 3), np.float32)

        async def enqueue(self, inputs: Tensors, a: Admission, trace: QueueTrace | None = None) -> Tensors:
            self.buffer[0, :2] = inputs["acc"][0] + inputs["x"][0]
            self.buffer[0, 2] = inputs["n"][0, 0] + 1
            return {"out": self.buffer[:, :2], "acc_out": self.buffer[:, :2], "n_out": self.buffer[:, 2:]}

    states = (
        StateSpec("acc", "acc_out", np.zeros((1, 2), np.float32)),
        StateSpec("n", "n_out", np.zeros((1, 1), np.float32)),
    )
    runner = SharedBuffer()
    sb = SequenceBatcher(runner, SequenceSpec((), states, IDLE_S), SequenceLimits(4, 1024), model="m",
                         schedule=FakeTimers())  # fmt: skip
    await sb.infer(1, x(1), adm(), start=True)
    await sb.infer(2, x(100), adm(), start=True)  # overwrites the buffer sequence 1's state came from
    assert sb.state_bytes == 2 * (8 + 4)
    out = await sb.infer(1, x(1), adm())
    assert out["out"].tolist() == [[2, 2]] and runner.buffer[0, 2] == 2  # its own state: 1 run before


async def test_released_ids_are_remembered_newest_first_up_to_the_bound() -> None:
    sb, _, _, _ = make(max_sequences=REMEMBER_RELEASED + 8, max_bytes=1 << 30)
    await sb.infer("first", x(1), adm(), start=True, end=True)
    await sb.infer("again", x(1), adm(), start=True, end=True)
    for i in range(REMEMBER_RELEASED - 2):
        await sb.infer(i, x(1), adm(), start=True, end=True)
    # Exactly REMEMBER_RELEASED released ids: all remembered, the oldest too.
    with pytest.raises(UnknownSequence, match="it ended"):
        await sb.infer("first", x(1), adm())
    await sb.infer("again", x(1), adm(), start=True)  # reopened: no longer among the released
    sb.release("again", "released by hand")  # released again: now the newest
    for extra in ("one more", "two more"):  # past the bound: the two oldest are forgotten
        await sb.infer(extra, x(1), adm(), start=True, end=True)
    with pytest.raises(UnknownSequence, match=r"it is not live: released by hand$"):
        await sb.infer("again", x(1), adm())
    with pytest.raises(UnknownSequence) as forgotten:  # the oldest was forgotten
        await sb.infer("first", x(1), adm())
    assert str(forgotten.value).endswith("it is not live: it was never started (or was released long ago)")


async def test_the_idle_release_says_after_how_long() -> None:
    sb, _, clock, timers = make()
    await sb.infer(1, x(1), adm(), start=True)
    clock.now += IDLE_S
    timers.fire()
    with pytest.raises(UnknownSequence) as released:
        await sb.infer(1, x(1), adm())
    assert str(released.value).endswith(
        f"it is not live: it was released after {IDLE_S:g} s without a request "
        "(max_sequence_idle_microseconds)"
    )


async def test_the_default_model_name_is_in_the_messages() -> None:
    sb = SequenceBatcher(FakeRunner(), spec(), SequenceLimits(4, 1024), schedule=FakeTimers())
    with pytest.raises(UnknownSequence, match=r"to model 'model' must specify the START"):
        await sb.infer(1, x(1), adm())


async def test_flags_take_their_controls_data_types() -> None:
    controls = (
        ControlSpec("s", ControlKind.START, np.dtype(np.int32), 0, 1),
        ControlSpec("e", ControlKind.END, np.dtype(np.float32), 0.5, 2.5),
        ControlSpec("r", ControlKind.READY, np.dtype(np.uint8), 0, 1),
    )
    sb, runner, _, _ = make(controls=controls)
    await sb.infer(1, x(1), adm(), start=True, end=True)  # the flags' true values
    await sb.infer(2, x(1), adm(), start=True)
    await sb.infer(2, x(1), adm())  # START and END false
    wanted = {"s": np.dtype(np.int32), "e": np.dtype(np.float32), "r": np.dtype(np.uint8)}
    assert [{n: f[n].dtype for n in "ser"} for f in (runner.feeds[0], runner.feeds[2])] == [wanted] * 2
    assert [runner.feeds[2][n].item() for n in "ser"] == [0, 0.5, 1]


@pytest.mark.parametrize(
    ("dtype", "sid", "wanted"),
    [
        (np.int8, 127, 127),
        (np.int8, -128, -128),
        (np.uint32, 4_294_967_295, 4_294_967_295),
        (np.uint64, 0, 0),
        (np.int64, -5, -5),
    ],
)
async def test_an_integer_correlation_id_fills_its_control_at_every_value_that_fits(
    dtype: type[np.integer], sid: int, wanted: int
) -> None:
    sb, runner, _, _ = make(controls=(ControlSpec("c", ControlKind.CORRID, np.dtype(dtype)),))
    await sb.infer(sid, x(1), adm(), start=True)
    corrid = runner.feeds[0]["c"]
    assert corrid.dtype == np.dtype(dtype) and corrid.shape == (1, 1) and corrid.item() == wanted


@pytest.mark.parametrize(("dtype", "sid"), [(np.int8, 128), (np.int8, -129), (np.uint32, -1)])
async def test_an_integer_correlation_id_that_does_not_fit_is_refused_naming_the_control(
    dtype: type[np.integer], sid: int
) -> None:
    sb, runner, _, _ = make(controls=(ControlSpec("corr", ControlKind.CORRID, np.dtype(dtype)),))
    with pytest.raises(SequenceError) as refused:
        await sb.infer(sid, x(1), adm(), start=True)
    name = np.dtype(dtype).name
    assert str(refused.value) == (
        f"sequence_id {sid} does not fit control input 'corr' ({name}, CONTROL_SEQUENCE_CORRID)"
    )
    assert runner.feeds == []


async def test_a_string_correlation_control_gets_the_ids_text() -> None:
    controls = (ControlSpec("c", ControlKind.CORRID, np.dtype(object)),)
    sb, runner, _, _ = make(controls=controls)
    await sb.infer("cam-7", x(1), adm(), start=True)
    await sb.infer(42, x(1), adm(), start=True)
    assert [(f["c"].dtype, f["c"].shape, f["c"].item()) for f in runner.feeds] == [
        (np.dtype(object), (1, 1), b"cam-7"),
        (np.dtype(object), (1, 1), b"42"),
    ]


async def test_a_text_id_for_an_integer_correlation_control_is_refused_saying_what_to_send() -> None:
    sb, _, _, _ = make(controls=(ControlSpec("corr", ControlKind.CORRID, np.dtype(np.uint64)),))
    with pytest.raises(SequenceError) as refused:
        await sb.infer("text", x(1), adm(), start=True)
    assert str(refused.value) == (
        "sequence 'text': control input 'corr' (CONTROL_SEQUENCE_CORRID) takes integer correlation "
        "ids; send sequence_id as an integer"
    )
