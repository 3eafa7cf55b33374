"""SequenceBatcher with a fake runner, a fake clock and a fake timer (batcher/sequence.py)."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import pytest

from batcher.admission import Admission
from batcher.errors import DeadlineExceeded
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

IDLE_S = 5.0


class FakeRunner:
    """out = acc + x; acc_out = out. Each run waits for its gate when `gated`; records the feeds."""

    def __init__(self) -> None:
        self.feeds: list[dict[str, np.ndarray]] = []
        self.gated = False
        self.gates: list[asyncio.Event] = []
        self.running = 0
        self.most_running = 0
        self.fail_next: Exception | None = None

    async def enqueue(self, inputs: Tensors, a: Admission, trace: QueueTrace | None = None) -> Tensors:
        self.feeds.append(dict(inputs))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            if self.gated:
                gate = asyncio.Event()
                self.gates.append(gate)
                await gate.wait()
            if self.fail_next is not None:
                exc, self.fail_next = self.fail_next, None
                raise exc
            out = inputs["acc"] + inputs["x"]
            return {"out": out, "acc_out": out.copy()}
        finally:
            self.running -= 1


class FakeTimers:
    def __init__(self) -> None:
        self.pending: list[tuple[float, Callable[[], None], FakeTimer]] = []

    def __call__(self, delay: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer()
        self.pending.append((delay, callback, timer))
        return timer

    def fire(self) -> None:
        due, self.pending = self.pending, []
        for _, callback, timer in due:
            if not timer.cancelled:
                callback()


class FakeTimer:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def spec(controls: tuple[ControlSpec, ...] = ()) -> SequenceSpec:
    initial = np.zeros((1, 2), np.float32)
    initial.flags.writeable = False
    return SequenceSpec(controls, (StateSpec("acc", "acc_out", initial),), IDLE_S)


def make(
    max_sequences: int = 4, max_bytes: int = 1024, controls: tuple[ControlSpec, ...] = ()
) -> tuple[SequenceBatcher, FakeRunner, Clock, FakeTimers]:
    runner, clock, timers = FakeRunner(), Clock(), FakeTimers()
    batcher = SequenceBatcher(
        runner,
        spec(controls),
        SequenceLimits(max_sequences, max_bytes),
        model="m",
        clock=clock,
        schedule=timers,
    )
    return batcher, runner, clock, timers


def adm(rows: int = 1) -> Admission:
    return Admission(rows, 1, 0.0, None, None, None)


def x(value: float) -> dict[str, np.ndarray]:
    return {"x": np.full((1, 2), value, np.float32)}


async def test_state_is_carried_and_the_end_releases_the_sequence() -> None:
    sb, _, _, _ = make()
    assert (await sb.infer(7, x(1), adm(), start=True))["out"].tolist() == [[1, 1]]
    out = await sb.infer(7, x(2), adm())
    assert out["out"].tolist() == [[3, 3]] and "acc_out" not in out
    assert sb.state_bytes == 8 and sb.live == 1
    await sb.infer(7, x(3), adm(), end=True)
    assert sb.live == 0 and sb.state_bytes == 0
    with pytest.raises(UnknownSequence, match=r"sequence 7 to model 'm' must specify the START .* it ended"):
        await sb.infer(7, x(1), adm())


async def test_a_sequences_requests_run_one_at_a_time_in_arrival_order() -> None:
    sb, runner, _, _ = make()
    runner.gated = True
    tasks = [asyncio.create_task(sb.infer(1, x(v), adm(), start=v == 1)) for v in (1, 2, 3)]
    other = asyncio.create_task(sb.infer(2, x(10), adm(), start=True))
    while len(runner.gates) < 2:
        await asyncio.sleep(0)
    for _ in range(20):  # loop turns in which a second request of sequence 1 could (wrongly) start
        await asyncio.sleep(0)
    assert sorted(f["x"][0, 0] for f in runner.feeds) == [1, 10]  # one per sequence in flight
    runner.gated = False
    for gate in runner.gates:
        gate.set()
    results = await asyncio.gather(*tasks)
    assert [r["out"][0, 0] for r in results] == [1, 3, 6] and (await other)["out"][0, 0] == 10
    assert [f["x"][0, 0] for f in runner.feeds if f["x"][0, 0] != 10] == [1, 2, 3]


async def test_a_failed_run_leaves_the_state_as_it_was() -> None:
    sb, runner, _, _ = make()
    await sb.infer(1, x(1), adm(), start=True)
    runner.fail_next = DeadlineExceeded("deadline exceeded while waiting in the queue")
    with pytest.raises(DeadlineExceeded):
        await sb.infer(1, x(100), adm())
    assert (await sb.infer(1, x(1), adm()))["out"].tolist() == [[2, 2]]


async def test_unknown_ids_and_multi_row_requests_are_refused() -> None:
    sb, _, _, _ = make()
    with pytest.raises(
        UnknownSequence, match=r"^inference request for sequence 'abc' to model 'm' .* never started"
    ):
        await sb.infer("abc", x(1), adm())
    with pytest.raises(
        SequenceError, match=r"^inference request to model 'm' must specify batch-size 1 .* got 2 rows"
    ):
        await sb.infer(1, {"x": np.ones((2, 2), np.float32)}, adm(2), start=True)
    assert sb.live == 0


async def test_live_sequences_and_state_bytes_are_bounded() -> None:
    sb, _, _, _ = make(max_sequences=2, max_bytes=1024)
    await sb.infer(1, x(1), adm(), start=True)
    await sb.infer(2, x(1), adm(), start=True)
    with pytest.raises(SequenceLimitReached, match=r"max_sequences=2"):
        await sb.infer(3, x(1), adm(), start=True)
    small, _, _, _ = make(max_sequences=10, max_bytes=20)  # 8 bytes a sequence: two fit
    await small.infer(1, x(1), adm(), start=True)
    await small.infer(2, x(1), adm(), start=True)
    with pytest.raises(SequenceLimitReached, match=r"max_sequence_state_bytes=20"):
        await small.infer(3, x(1), adm(), start=True)


async def test_an_idle_sequence_is_released_by_its_timer_not_while_busy() -> None:
    sb, runner, clock, timers = make()
    await sb.infer(1, x(1), adm(), start=True)
    clock.now += IDLE_S - 1
    timers.fire()  # early (a timer armed before the last request): re-armed for the rest
    assert sb.live == 1 and [d for d, _, t in timers.pending if not t.cancelled] == [1.0]
    runner.gated = True
    busy = asyncio.create_task(sb.infer(1, x(1), adm()))
    while not runner.gates:
        await asyncio.sleep(0)
    clock.now += 10 * IDLE_S
    timers.fire()
    assert sb.live == 1  # a request is running: not idle
    runner.gates[0].set()
    await busy
    clock.now += IDLE_S
    timers.fire()
    assert sb.live == 0
    with pytest.raises(UnknownSequence, match="max_sequence_idle_microseconds"):
        await sb.infer(1, x(1), adm())


async def test_release_fails_the_requests_still_waiting_and_keeps_no_state() -> None:
    sb, runner, _, _ = make()
    runner.gated = True
    first = asyncio.create_task(sb.infer(1, x(1), adm(), start=True))
    waiting = asyncio.create_task(sb.infer(1, x(1), adm()))
    while not runner.gates:
        await asyncio.sleep(0)
    assert sb.release(1, "it was released when the stream that sent it ended")
    runner.gates[0].set()
    assert (await first)["out"].tolist() == [[1, 1]]  # computed: answered, its state dropped
    with pytest.raises(UnknownSequence, match="stream that sent it ended"):
        await waiting
    assert sb.live == 0 and sb.state_bytes == 0 and not sb.release(1, "again")


async def test_control_inputs_are_filled_per_request() -> None:
    controls = (
        ControlSpec("s", ControlKind.START, np.dtype(np.int32), 0, 1),
        ControlSpec("e", ControlKind.END, np.dtype(np.float32), 0.5, 2.5),
        ControlSpec("r", ControlKind.READY, np.dtype(np.bool_), False, True),
        ControlSpec("c", ControlKind.CORRID, np.dtype(np.uint64)),
    )
    sb, runner, _, _ = make(controls=controls)
    await sb.infer(9, x(1), adm(), start=True)
    await sb.infer(9, x(1), adm())
    await sb.infer(9, x(1), adm(), end=True)
    seen = [tuple(f[n].item() for n in "serc") for f in runner.feeds]
    assert seen == [(1, 0.5, True, 9), (0, 0.5, True, 9), (0, 2.5, True, 9)]
    assert all(f[n].shape == (1, 1) for f in runner.feeds for n in "serc")
    with pytest.raises(SequenceError, match="CONTROL_SEQUENCE_CORRID"):
        await sb.infer("text", x(1), adm(), start=True)


async def test_an_end_and_the_next_start_of_the_same_id_sent_back_to_back_keep_their_order() -> None:
    sb, runner, _, _ = make()
    await sb.infer(5, x(1), adm(), start=True)
    runner.gated = True
    ending = asyncio.create_task(sb.infer(5, x(1), adm(), end=True))
    restart = asyncio.create_task(sb.infer(5, x(7), adm(), start=True))
    after = asyncio.create_task(sb.infer(5, x(1), adm()))
    while not runner.gates:
        await asyncio.sleep(0)
    runner.gated = False
    runner.gates[0].set()
    assert (await ending)["out"].tolist() == [[2, 2]]
    assert (await restart)["out"].tolist() == [[7, 7]]  # a new sequence, from the initial state
    assert (await after)["out"].tolist() == [[8, 8]]
    assert sb.live == 1 and sb.state_bytes == 8


async def test_a_model_without_a_batch_dimension_gets_unbatched_controls_and_state() -> None:
    """max_batch_size 0: control tensors of shape (1,), the state without a row axis."""
    initial = np.zeros((2,), np.float32)
    controls = (
        ControlSpec("s", ControlKind.START, np.dtype(np.int32), 0, 1),
        ControlSpec("c", ControlKind.CORRID, np.dtype(np.uint64)),
    )
    runner = FakeRunner()
    sb = SequenceBatcher(
        runner,
        SequenceSpec(controls, (StateSpec("acc", "acc_out", initial),), IDLE_S, False),
        SequenceLimits(4, 1024),
        model="m",
        schedule=FakeTimers(),
    )
    one = {"x": np.ones((2,), np.float32)}
    await sb.infer(3, one, adm(), start=True)
    assert (await sb.infer(3, one, adm()))["out"].tolist() == [2, 2]
    assert [(f["s"].shape, f["c"].shape, f["acc"].shape) for f in runner.feeds] == [((1,), (1,), (2,))] * 2
    assert [f["s"].item() for f in runner.feeds] == [1, 0] and runner.feeds[1]["c"].item() == 3


class EchoRunner:
    """acc_out = x: a STRING state that is the last request's input."""

    async def enqueue(self, inputs: Tensors, a: Admission, trace: QueueTrace | None = None) -> Tensors:
        return {"out": inputs["acc"], "acc_out": inputs["x"]}


async def test_a_string_state_counts_its_elements_bytes() -> None:
    initial = np.full((1, 1), b"", dtype=object)
    spec = SequenceSpec((), (StateSpec("acc", "acc_out", initial),), IDLE_S)
    sb = SequenceBatcher(EchoRunner(), spec, SequenceLimits(4, 10), model="m", schedule=FakeTimers())
    text = {"x": np.array([[b"hello"]], dtype=object)}
    assert (await sb.infer(1, text, adm(), start=True))["out"].tolist() == [[b""]]
    assert sb.state_bytes == 5
    assert (await sb.infer(1, text, adm()))["out"].tolist() == [[b"hello"]]
    with pytest.raises(SequenceLimitReached, match="max_sequence_state_bytes=10"):
        await sb.infer(1, {"x": np.array([[b"a long text"]], dtype=object)}, adm())


async def test_only_the_owner_of_the_latest_start_may_release_with_an_owner() -> None:
    # A stream that only continued a sequence, or whose start another stream's start took over
    # from, released it when it ended (the hostile pass's hijack through one refused request).
    sb, _, _, _ = make()
    a, b = object(), object()
    await sb.infer(1, x(1), adm(), start=True)  # a unary start: no owner
    await sb.infer(1, x(1), adm(), owner=a)  # a stream continues it
    assert not sb.release(1, "stream a ended", a) and sb.live == 1
    await sb.infer(2, x(1), adm(), start=True, owner=a)
    await sb.infer(2, x(1), adm(), start=True, owner=b)  # b restarts it: b's now
    assert not sb.release(2, "stream a ended", a)
    assert sb.release(2, "stream b ended", b) and sb.live == 1
    assert sb.release(1, "released by the server")  # without an owner: always


@pytest.mark.parametrize(
    "failure", [DeadlineExceeded("deadline exceeded while waiting in the queue"), asyncio.CancelledError()]
)
async def test_a_start_that_did_not_run_opens_no_sequence(failure: BaseException) -> None:
    """An expired or cancelled start left the sequence live: later requests ran without a start
    from the initial state, and it held one of max_sequences until its idle timeout."""
    sb, runner, _, _ = make(max_sequences=1)
    runner.fail_next = failure  # type: ignore[assignment]
    with pytest.raises(type(failure)):
        await sb.infer(3, x(1), adm(), start=True)
    assert sb.live == 0 and sb.state_bytes == 0
    with pytest.raises(UnknownSequence, match="its sequence_start request did not run"):
        await sb.infer(3, x(1), adm())
    assert (await sb.infer(4, x(1), adm(), start=True))["out"].tolist() == [[1, 1]]  # the slot is free


async def test_a_refused_corrid_opens_no_sequence() -> None:
    corrid = ControlSpec("CORRID", ControlKind.CORRID, np.dtype(np.int32))
    sb, _, _, _ = make(max_sequences=1, controls=(corrid,))
    with pytest.raises(SequenceError, match="does not fit"):
        await sb.infer(2**40, x(1), adm(), start=True)
    assert sb.live == 0
    await sb.infer(5, x(1), adm(), start=True)


async def test_a_restart_that_did_not_run_keeps_the_state_and_owner() -> None:
    """An expired restart wiped the state (the next request answered 1 where 5 was due) and made
    its stream the owner, whose end then released the sequence."""
    sb, runner, _, _ = make()
    first, second = object(), object()
    await sb.infer(1, x(4), adm(), start=True, owner=first)
    runner.fail_next = DeadlineExceeded("deadline exceeded while waiting in the queue")
    with pytest.raises(DeadlineExceeded):
        await sb.infer(1, x(100), adm(), start=True, owner=second)
    assert not sb.release(1, "its stream ended", owner=second)
    assert (await sb.infer(1, x(1), adm()))["out"].tolist() == [[5, 5]]
    assert sb.release(1, "its stream ended", owner=first)


async def test_a_request_waiting_for_its_turn_is_answered_at_its_deadline() -> None:
    """One behind its sequence's slow run was answered DEADLINE_EXCEEDED only when its turn came."""
    sb, runner, clock, _ = make()
    await sb.infer(1, x(1), adm(), start=True)
    runner.gated = True
    slow = asyncio.create_task(sb.infer(1, x(1), adm()))
    while not runner.gates:
        await asyncio.sleep(0)
    soon = Admission(1, 1, clock.now, clock.now + 0.05, None, clock.now + 0.05)
    with pytest.raises(DeadlineExceeded, match="waiting for the sequence's earlier requests"):
        await sb.infer(1, x(100), soon)
    assert len(runner.feeds) == 2  # never fed to the model
    runner.gated = False
    runner.gates[0].set()
    await slow
    assert (await sb.infer(1, x(1), adm()))["out"].tolist() == [[3, 3]]


async def test_the_servers_hint_follows_never_started() -> None:
    runner = FakeRunner()
    sb = SequenceBatcher(runner, spec(), SequenceLimits(4, 1024), model="m", unknown_hint="; one connection")
    with pytest.raises(
        UnknownSequence, match=r"it was never started \(or was released long ago\); one connection$"
    ):
        await sb.infer(9, x(1), adm())


def test_workers_give_sequence_models_the_one_connection_hint() -> None:
    from server.models.sequence_config import sequence_batcher
    from server.settings import ServerSettings

    model = type("Model", (), {"spec": spec()})()
    alone = sequence_batcher(model, FakeRunner(), ServerSettings(), "m")  # type: ignore[arg-type]
    worker = sequence_batcher(model, FakeRunner(), ServerSettings(worker_index=1), "m")  # type: ignore[arg-type]
    assert alone._unknown_hint == "" and "one connection" in worker._unknown_hint


async def test_a_batcher_takes_over_why_a_retired_ones_sequences_ended() -> None:
    old, _, _, _ = make()
    await old.infer(1, x(1), adm(), start=True)
    await old.infer(2, x(1), adm(), start=True, end=True)
    old.close()
    record = old.released()
    assert list(record) == [2, 1]  # oldest first: 2 ended, then 1 went with the version
    new, _, _, _ = make()
    await new.infer(2, x(1), adm(), start=True)  # live again here: not overwritten
    new.remember(record)
    with pytest.raises(
        UnknownSequence,
        match=r"sequence 1 .* it is not live: the model version serving it was unloaded or replaced$",
    ):
        await new.infer(1, x(1), adm())
    assert (await new.infer(2, x(1), adm()))["out"].tolist() == [[2, 2]]
    many = OrderedDict((sid, "gone") for sid in range(REMEMBER_RELEASED + 5))
    new.remember(many)
    assert len(new.released()) == REMEMBER_RELEASED and next(iter(new.released())) != 0  # the oldest left
