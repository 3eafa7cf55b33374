"""SequenceBatcher: stateful sequences (Triton's sequence batcher, "oldest" strategy) over a runner.

A sequence is a series of requests with one correlation id. Its requests run one at a time, in
the order they arrived (a FIFO lock per sequence id), so a batch holds at most one request of each
sequence: one slot per live sequence, and whichever sequences have a request ready share a batch
(a model without a batch dimension runs each request alone). The runner (the model's
DynamicBatcher) forms and runs those batches with its usual rules.

Between a sequence's requests the batcher keeps its implicit state: output `output_name` of one
run is input `input_name` of the next (the spec's initial value on the sequence's start). It also
fills the control inputs (START, END, READY, CORRID) of each row. A request that fails, expires
or whose answer fails leaves the state as it was. Live sequences and their state bytes are bounded;
a sequence is released by its end request, after `idle_s` without a request (a timer), by
`release` (its stream ended), or when its version is retired (`close`, `drain`); `on_gone` hears.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Protocol

from batcher.admission import Admission
from batcher.budget import input_bytes
from batcher.errors import BatcherStopped, NotAccepting
from batcher.sequence_types import (
    NEVER_STARTED,
    RETIRED,
    ControlKind,
    LiveSequence,
    SequenceId,
    SequenceLimitReached,
    SequenceLimits,
    SequenceSpec,
    Timer,
    UnknownSequence,
    check_one_row,
    control_flags,
    corrid_input,
    not_live,
    retired,
    sid_text,
    taken_state,
)
from batcher.turn_deadline import Turn, TurnDeadlines, take_turn
from batcher.types import Array, QueueTrace, Tensors

# What a start changed, to put back if it does not run: the state, its bytes, the owner (None: opened).
Undo = tuple[dict[str, Array], int, object | None] | None
# How many released sequence ids are remembered, to say why a late request finds none.
REMEMBER_RELEASED = 1024
REFUSED = "its sequence_start request did not run (it was refused: "  # for the sequence limits
_NOT_RUN, _RAN = " did not run (it failed, expired or was cancelled)", "'s answer could not be delivered"


class Runner(Protocol):
    """What runs a sequence's request in a batch (DynamicBatcher.enqueue)."""

    async def enqueue(self, inputs: Tensors, a: Admission, trace: QueueTrace | None = None) -> Tensors: ...


# Calls the callable after the delay in seconds (loop.call_later by default; a fake in tests).
Schedule = Callable[[float, Callable[[], None]], Timer]
# Builds and delivers a request's answer from its outputs, in its sequence's turn (see `infer`).
Answer = Callable[[Tensors], Awaitable[None]]
# Told a sequence id no longer live here: released, or a start that opened nothing (refused, ...).
OnGone = Callable[[SequenceId], None]


class SequenceBatcher:
    """The live sequences of one model version and their state."""

    def __init__(
        self,
        runner: Runner,
        spec: SequenceSpec,
        limits: SequenceLimits,
        *,
        model: str = "model",
        clock: Callable[[], float] = time.monotonic,
        schedule: Schedule | None = None,
        unknown_hint: str = "",  # added to "never started" (the server's --workers say why)
        deadlines: TurnDeadlines | None = None,  # the runner's give-up rule (None: the deadline)
    ) -> None:
        self._runner = runner
        self._deadlines = deadlines
        self.on_gone: OnGone | None = None  # set by the server's sequence routing (its notes)
        self._unknown_hint = unknown_hint
        self._spec = spec
        self._limits = limits
        self._model = model
        self._clock = clock
        self._schedule = schedule
        self._live: dict[SequenceId, LiveSequence] = {}
        self._turns: dict[SequenceId, Turn] = {}  # ids with requests running or waiting
        self._released: OrderedDict[SequenceId, str] = OrderedDict()
        self._state_bytes = 0
        self._growing = 0  # growth of states run but not yet kept (their answers being written)
        self._closed = False  # the model version stopped: no sequence opens any more
        self._why = RETIRED  # why, said to the continuations of its sequences (close)
        self._drained = asyncio.Event()  # set once closed and the sequences it kept have gone
        self._state_outputs = frozenset(s.output_name for s in spec.states) - spec.answered_states  # kept
        # One shared mapping: a state is replaced after each run, never written in place.
        self._initial: dict[str, Array] = {s.input_name: s.initial for s in spec.states}
        # One row's control tensor shape: (1, 1), or (1,) for a model without a batch dimension.
        self._control_shape = (1, 1) if spec.batched else (1,)
        self._flags = control_flags(spec.controls, self._control_shape)  # made once

    @property
    def live(self) -> int:
        return len(self._live)

    @property
    def state_bytes(self) -> int:
        return self._state_bytes

    def is_live(self, sid: SequenceId) -> bool:
        return sid in self._live

    def remembers(self, sid: SequenceId) -> bool:
        """Whether `sid` was released here recently (a late request is told why)."""
        return sid in self._released

    @property
    def max_sequences(self) -> int:
        return self._limits.max_sequences

    async def infer(
        self,
        sid: SequenceId,
        inputs: Tensors,
        a: Admission,
        *,
        start: bool = False,
        end: bool = False,
        trace: QueueTrace | None = None,
        owner: object | None = None,
        answer: Answer | None = None,
    ) -> Tensors:
        """Run one request of sequence `sid` after the sequence's earlier requests; its outputs
        without the state outputs. Raises UnknownSequence, SequenceLimitReached, SequenceError,
        or what the runner or `answer` raised (the state then unchanged). `owner`: who sent it (a
        stream); a start makes it the sequence's owner, which alone may `release(..., owner)` it.
        `answer` gets those outputs before the state is kept (an undeliverable answer had kept it)."""
        check_one_row(self._model, sid, a.rows)
        turn = self._turns.get(sid)
        if turn is None:
            turn = self._turns[sid] = Turn()
        # One of its id ahead: held against the queue's bounds while it waits (200 had passed them).
        rules = self._deadlines
        held = None if rules is None or not turn.waiting else rules.hold(inputs, a, self._fed_besides(sid))
        turn.waiting += 1
        seq: LiveSequence | None = None
        try:
            try:
                await take_turn(turn, a, self._clock, rules)
            finally:
                if rules is not None and held is not None:
                    rules.release(held)
            try:
                seq = self._live.get(sid)
                if seq is None:
                    if not start:
                        raise retired(self._model, sid, turn.retired) if turn.retired else self._not_live(sid)
                    if self._closed:  # refused below: the requests queued behind it are told why
                        turn.retired = f"{self._why}, before the sequence_start queued ahead of it ran"
                    seq = self._open(sid)
                    undo: Undo = None
                else:
                    undo = (seq.state, seq.nbytes, seq.owner)
                    if start and seq.state is not self._initial:  # a start restarts a live sequence
                        self._set_state(seq, self._initial, self._spec.initial_bytes)
                if start:
                    seq.owner = owner
                kept = None
                try:
                    outputs = await self._runner.enqueue(self._feed(seq, inputs, start, end), a, trace)
                    kept = self._next_state(seq, outputs)
                    result = {k: v for k, v in outputs.items() if k not in self._state_outputs}
                    if answer is not None:
                        await answer(result)
                except BaseException as exc:
                    self._growing -= 0 if kept is None else kept[2]
                    if start:
                        self._undo_start(seq, undo, ran=kept is not None)
                    elif self._closed and isinstance(exc, BatcherStopped):  # the drain ended first
                        raise retired(self._model, sid, turn.retired or self._why) from None
                    raise
                if kept is not None:
                    self._growing -= kept[2]
                    if not seq.released:  # released while it answered: nothing to keep
                        self._set_state(seq, kept[0], kept[1])
                if end:
                    self._release(seq, "it ended (its sequence_end request was answered)")
                return result
            finally:
                turn.lock.release()
        finally:
            turn.waiting -= 1
            if turn.waiting == 0:
                del self._turns[sid]
                self._turns_done(sid)
            if start and seq is None and sid not in self._live:  # a start that opened nothing
                self._gone(sid)

    def _turns_done(self, sid: SequenceId) -> None:
        """The last request of `sid` was answered: its idle time starts (retired: the sequence goes)."""
        seq = self._live.get(sid)
        if seq is not None and self._closed:
            self._release(seq, self._why)
        elif seq is not None:
            seq.last_used = self._clock()
            self._arm(seq, self._spec.idle_s)

    def _undo_start(self, seq: LiveSequence, undo: Undo, ran: bool = False) -> None:
        """A start that did not run (failed, expired, refused, cancelled) changes nothing: a new
        sequence is not opened, a restarted one keeps its state and owner (it had lost its state)."""
        if seq.released:
            return
        if undo is None:  # `ran`: it ran, but its answer could not be written (its state was not kept)
            self._release(seq, f"its sequence_start request{_RAN if ran else _NOT_RUN}")
            return
        state, nbytes, owner = undo
        self._set_state(seq, state, nbytes)
        seq.owner = owner

    def release(self, sid: SequenceId, why: str, owner: object | None = None) -> bool:
        """Release a live sequence now (its requests still waiting fail); False if none was live,
        or `owner` (when given) did not send its latest start (a stream that only continued it,
        or was refused, or was taken over from, does not end it)."""
        seq = self._live.get(sid)
        if seq is None or (owner is not None and seq.owner is not owner):
            return False
        self._release(seq, why)
        return True

    def close(self, why: str = RETIRED) -> None:
        """The version is retired: its sequences end, telling continuations `why`; one with requests
        queued once they have run (`drain`; they had been refused "must specify the START flag").
        For the routing and `released()` all are gone now. A later start is refused NotAccepting (one
        run here had opened a sequence nobody recorded, keeping this batcher alive). Idempotent."""
        if self._closed:
            return
        self._closed, self._why = True, why
        for seq in list(self._live.values()):
            if seq.sid in self._turns:
                self._released[seq.sid] = why
                self._gone(seq.sid)
            else:
                self._release(seq, why)
        self.on_gone = None  # told now: a later release must not drop a newer start's note

    async def drain(self, timeout_s: float) -> None:
        """After `close`: wait up to `timeout_s` for the requests the kept sequences had queued to
        run, then release those sequences: their requests still waiting are answered
        SequenceRetired (UNAVAILABLE, naming the grace), not run."""
        if not self._closed:
            return
        if self._live:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._drained.wait(), timeout_s)
        left = f"{self._why}, and the {timeout_s:g} s it had to run the requests already queued ran out"
        for seq in list(self._live.values()):
            turn = self._turns.get(seq.sid)
            if turn is not None:
                turn.retired = f"{left} (the server's shutdown_grace_s)"
            self._release(seq, self._why)

    def released(self) -> OrderedDict[SequenceId, str]:
        """Why each recently released sequence went (oldest first), for the batcher that follows."""
        return OrderedDict(self._released)

    def remember(self, released: OrderedDict[SequenceId, str]) -> None:
        """Take over a retired batcher's `released()`: a continuation of a sequence a reload ended
        was told "never started" by the new version's batcher."""
        for sid, why in released.items():
            if sid not in self._live:
                self._remember(sid, why)

    # -- state --------------------------------------------------------------------------------

    def _open(self, sid: SequenceId) -> LiveSequence:
        if self._closed:
            raise NotAccepting(
                f"sequence {sid_text(sid)}: the version of model '{self._model}' it was sent to was "
                "unloaded or replaced before its sequence_start ran"
            )
        limits = self._limits
        if len(self._live) >= limits.max_sequences:
            self._remember(sid, f"{REFUSED}max_sequences={limits.max_sequences} sequences were live)")
            raise SequenceLimitReached(
                f"model '{self._model}' holds {len(self._live)} live sequences "
                f"(max_sequences={limits.max_sequences}): end sequences with sequence_end, or wait "
                "for idle ones to be released"
            )
        needed = self._spec.initial_bytes
        if self._state_bytes + self._growing + needed > limits.max_state_bytes:
            self._remember(sid, f"{REFUSED}max_sequence_state_bytes={limits.max_state_bytes} was held)")
            raise SequenceLimitReached(
                f"model '{self._model}': a new sequence's {needed} state bytes would pass "
                f"max_sequence_state_bytes={limits.max_state_bytes} ({self._state_bytes} held)"
            )
        seq = LiveSequence(sid, self._initial, needed, self._clock())
        self._live[sid] = seq
        self._released.pop(sid, None)
        self._state_bytes += needed
        self._arm(seq, self._spec.idle_s)
        return seq

    def _fed_besides(self, sid: SequenceId) -> int:
        """Bytes a request of `sid` is queued with besides its inputs (state, controls): held too."""
        seq = self._live.get(sid) or LiveSequence(sid, self._initial, 0, 0.0)
        return input_bytes(self._feed(seq, {}, False, False))  # as the queue will count them

    def _feed(self, seq: LiveSequence, inputs: Tensors, start: bool, end: bool) -> dict[str, Array]:
        feed = dict(inputs)
        feed.update(seq.state)
        for control in self._spec.controls:
            kind = control.kind
            if kind is ControlKind.CORRID:
                feed[control.name] = corrid_input(control.name, control.dtype, seq.sid, self._control_shape)
            else:
                on = kind is ControlKind.READY or (start if kind is ControlKind.START else end)
                feed[control.name] = self._flags[control.name][on]
        return feed

    def _next_state(self, seq: LiveSequence, outputs: Tensors) -> tuple[dict[str, Array], int, int] | None:
        """The state outputs as the sequence's next state, its bytes and its growth (counted in
        `_growing` until kept or dropped), kept once answered."""
        if seq.released:  # released while it ran (its stream ended): nothing to keep
            return None
        state, nbytes = taken_state(self._spec.states, outputs)
        # Counting the growth of others still answering: it had passed the limit once kept (32 of 24).
        if self._state_bytes + self._growing - seq.nbytes + nbytes > self._limits.max_state_bytes:
            self._release(seq, "its state outgrew max_sequence_state_bytes")
            raise SequenceLimitReached(
                f"model '{self._model}': sequence {sid_text(seq.sid)}'s state grew to {nbytes} bytes, past "
                f"max_sequence_state_bytes={self._limits.max_state_bytes}; the sequence was released"
            )
        grown = max(0, nbytes - seq.nbytes)
        self._growing += grown
        return state, nbytes, grown

    def _set_state(self, seq: LiveSequence, state: dict[str, Array], nbytes: int) -> None:
        self._state_bytes += nbytes - seq.nbytes
        seq.state, seq.nbytes = state, nbytes

    # -- release ------------------------------------------------------------------------------

    def _release(self, seq: LiveSequence, why: str) -> None:
        if seq.released:
            return
        seq.released = True
        if seq.timer is not None:
            seq.timer.cancel()
            seq.timer = None
        self._live.pop(seq.sid, None)
        self._state_bytes -= seq.nbytes
        seq.state, seq.nbytes = {}, 0
        self._remember(seq.sid, why)
        self._gone(seq.sid)
        if self._closed and not self._live:
            self._drained.set()

    def _remember(self, sid: SequenceId, why: str) -> None:
        """Why `sid` is not live, told its late requests; the newest REMEMBER_RELEASED ids only."""
        self._released[sid] = why
        self._released.move_to_end(sid)
        while len(self._released) > REMEMBER_RELEASED:
            self._released.popitem(last=False)

    def _gone(self, sid: SequenceId) -> None:
        if self.on_gone is not None:
            self.on_gone(sid)

    def _arm(self, seq: LiveSequence, delay_s: float) -> None:
        if seq.timer is not None:
            seq.timer.cancel()
        schedule = self._schedule or asyncio.get_running_loop().call_later
        seq.timer = schedule(delay_s, lambda: self._idle_check(seq))

    def _idle_check(self, seq: LiveSequence) -> None:
        seq.timer = None
        if seq.released or seq.sid in self._turns:
            return  # re-armed when its last request is answered
        idle = self._clock() - seq.last_used
        if idle >= self._spec.idle_s:
            self._release(
                seq,
                f"it was released after {self._spec.idle_s:g} s without a request "
                "(max_sequence_idle_microseconds)",
            )
        else:
            self._arm(seq, self._spec.idle_s - idle)

    def _not_live(self, sid: SequenceId) -> UnknownSequence:
        return not_live(self._model, sid, self._released.get(sid, NEVER_STARTED + self._unknown_hint))
