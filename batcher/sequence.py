"""SequenceBatcher: stateful sequences (Triton's sequence batcher, "oldest" strategy) over a runner.

A sequence is a series of requests with one correlation id. Its requests run one at a time, in
the order they arrived (a FIFO lock per sequence id), so a batch holds at most one request of each
sequence: one slot per live sequence, and whichever sequences have a request ready share a batch
(a model without a batch dimension runs each request alone). The runner (the model's
DynamicBatcher) forms and runs those batches with its usual rules.

Between a sequence's requests the batcher keeps its implicit state: output `output_name` of one
run is input `input_name` of the next (the spec's initial value on the sequence's start). It also
fills the control inputs (START, END, READY, CORRID) of each row. A failed or expired request
leaves the state as it was. Live sequences and their state bytes are bounded; a sequence is
released by its end request, after `idle_s` without a request (a timer), by `release` (the stream
that drove it ended), or when the model stops; `on_gone` hears of it (the server's routing).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

import numpy as np

from batcher.admission import Admission
from batcher.budget import input_bytes
from batcher.errors import NotAccepting
from batcher.sequence_types import (
    NEVER_STARTED,
    RETIRED,
    ControlKind,
    SequenceError,
    SequenceId,
    SequenceLimitReached,
    SequenceLimits,
    SequenceSpec,
    UnknownSequence,
    check_one_row,
    not_live,
    state_bytes,
)
from batcher.turn_deadline import TurnDeadlines, wait_turn
from batcher.types import Array, QueueTrace, Tensors

# How many released sequence ids are remembered, to say why a late request finds none.
REMEMBER_RELEASED = 1024


class Runner(Protocol):
    """What runs a sequence's request in a batch (DynamicBatcher.enqueue)."""

    async def enqueue(self, inputs: Tensors, a: Admission, trace: QueueTrace | None = None) -> Tensors: ...


class Timer(Protocol):
    def cancel(self) -> None: ...


# Calls the callable after the delay in seconds (loop.call_later by default; a fake in tests).
Schedule = Callable[[float, Callable[[], None]], Timer]
# Told a sequence id no longer live here: released, or a start that opened nothing (refused, ...).
OnGone = Callable[[SequenceId], None]


class _Turn:
    """One sequence id's requests holding or waiting for their turn (apart from the sequence: an end
    and the next start of the id, back to back, keep their order)."""

    __slots__ = ("lock", "waiting")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()  # FIFO: the id's requests run in arrival order
        self.waiting = 0


class _Sequence:
    __slots__ = ("last_used", "nbytes", "owner", "released", "sid", "state", "timer")

    def __init__(self, sid: SequenceId, state: dict[str, Array], nbytes: int, now: float) -> None:
        self.sid = sid
        self.state = state  # by state input name, batch-first, one row; replaced, never mutated
        self.nbytes = nbytes
        self.last_used = now
        self.timer: Timer | None = None
        self.released = False
        self.owner: object | None = None  # who sent its latest start (a stream), if anyone said


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
        self._live: dict[SequenceId, _Sequence] = {}
        self._turns: dict[SequenceId, _Turn] = {}  # ids with requests running or waiting
        self._released: OrderedDict[SequenceId, str] = OrderedDict()
        self._state_bytes = 0
        self._closed = False  # the model version stopped: no sequence opens any more
        self._state_outputs = frozenset(s.output_name for s in spec.states)
        # One shared mapping: a state is replaced after each run, never written in place.
        self._initial: dict[str, Array] = {s.input_name: s.initial for s in spec.states}
        # One row's control tensor shape: (1, 1), or (1,) for a model without a batch dimension.
        self._control_shape = (1, 1) if spec.batched else (1,)
        # The constant control tensors, made once: flags' false and true values.
        shape = self._control_shape
        self._flags = {
            c.name: (np.full(shape, c.false_value, c.dtype), np.full(shape, c.true_value, c.dtype))
            for c in spec.controls
            if c.kind is not ControlKind.CORRID
        }

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
    ) -> Tensors:
        """Run one request of sequence `sid` after the sequence's earlier requests; its outputs
        without the state outputs. Raises UnknownSequence, SequenceLimitReached, SequenceError,
        or whatever the runner raised (the state is then unchanged). `owner`: who sent it (a
        stream); a start makes it the sequence's owner, which alone may `release(..., owner)` it."""
        check_one_row(self._model, sid, a.rows)
        turn = self._turns.get(sid)
        if turn is None:
            turn = self._turns[sid] = _Turn()
        # One of its id ahead: held against the queue's bounds while it waits (200 had passed them).
        rules = self._deadlines
        held = None if rules is None or not turn.waiting else rules.hold(inputs, a, self._fed_besides(sid))
        turn.waiting += 1
        seq: _Sequence | None = None
        try:
            try:
                await self._wait_turn(turn, a)
            finally:
                if rules is not None and held is not None:
                    rules.release(held)
            try:
                seq = self._live.get(sid)
                if seq is None:
                    if not start:
                        raise self._not_live(sid)
                    seq = self._open(sid)
                    undo: tuple[dict[str, Array], int, object | None] | None = None
                else:
                    undo = (seq.state, seq.nbytes, seq.owner)
                    if start and seq.state is not self._initial:  # a start restarts a live sequence
                        self._set_state(seq, self._initial, self._spec.initial_bytes)
                if start:
                    seq.owner = owner
                try:
                    outputs = await self._runner.enqueue(self._feed(seq, inputs, start, end), a, trace)
                except BaseException:
                    if start:
                        self._undo_start(seq, undo)
                    raise
                result = self._keep_state(seq, outputs)
                if end:
                    self._release(seq, "it ended (its sequence_end request was answered)")
                return result
            finally:
                turn.lock.release()
        finally:
            turn.waiting -= 1
            if turn.waiting == 0:
                del self._turns[sid]
                if seq is not None and not seq.released:
                    seq.last_used = self._clock()
                    self._arm(seq, self._spec.idle_s)
            if start and seq is None and sid not in self._live:  # a start that opened nothing
                self._gone(sid)

    async def _wait_turn(self, turn: _Turn, a: Admission) -> None:
        """Take the id's lock: at once with none of its id ahead, else until the request's give-up
        point (batcher/turn_deadline.py)."""
        if a.hard is None or turn.waiting == 1:  # none of its id ahead: taken at once, no timer
            await turn.lock.acquire()
            return
        await wait_turn(turn.lock, a, self._clock, self._deadlines)

    def _undo_start(self, seq: _Sequence, undo: tuple[dict[str, Array], int, object | None] | None) -> None:
        """A start that did not run (it failed, expired, was refused or cancelled) leaves things as
        they were: a new sequence is not opened (it held a slot and let later requests in without
        a start), a restarted one keeps its state and owner (it had lost its state)."""
        if seq.released:
            return
        if undo is None:
            self._release(seq, "its sequence_start request did not run (it failed, expired or was cancelled)")
            return
        state, nbytes, owner = undo
        self._set_state(seq, state, nbytes)
        seq.owner = owner

    def release(self, sid: SequenceId, why: str, owner: object | None = None) -> bool:
        """Release a live sequence now (its requests still waiting fail); False if none was live,
        or `owner` (when given) did not send its latest start: a stream that only continued a
        sequence, or whose request was refused, or that another stream's start took over from, does
        not end it."""
        seq = self._live.get(sid)
        if seq is None or (owner is not None and seq.owner is not owner):
            return False
        self._release(seq, why)
        return True

    def close(self, why: str = RETIRED) -> None:
        """The model stops: release every sequence and its timer, saying `why` to its continuations
        (a budget's eviction says so). A start after this is refused
        NotAccepting (its caller may send it to the version serving now): one that ran here would
        open a sequence nobody recorded as released, answered OK, its continuation told "never
        started", and its idle timer kept this batcher alive."""
        self._closed = True
        for seq in list(self._live.values()):
            self._release(seq, why)

    def released(self) -> OrderedDict[SequenceId, str]:
        """Why each recently released sequence went (oldest first), for the batcher that follows."""
        return OrderedDict(self._released)

    def remember(self, released: OrderedDict[SequenceId, str]) -> None:
        """Take over a retired batcher's record (`released()`): a request continuing a sequence
        that a reload or unload ended was told "never started" by the new version's batcher."""
        for sid, why in released.items():
            if sid not in self._live:
                self._released[sid] = why
        while len(self._released) > REMEMBER_RELEASED:
            self._released.popitem(last=False)

    # -- state --------------------------------------------------------------------------------

    def _open(self, sid: SequenceId) -> _Sequence:
        if self._closed:
            raise NotAccepting(
                f"sequence {sid}: the version of model '{self._model}' it was sent to was unloaded or "
                "replaced before its sequence_start ran"
            )
        limits = self._limits
        if len(self._live) >= limits.max_sequences:
            raise SequenceLimitReached(
                f"model '{self._model}' holds {len(self._live)} live sequences "
                f"(max_sequences={limits.max_sequences}): end sequences with sequence_end, or wait "
                "for idle ones to be released"
            )
        needed = self._spec.initial_bytes
        if self._state_bytes + needed > limits.max_state_bytes:
            raise SequenceLimitReached(
                f"model '{self._model}': a new sequence's {needed} state bytes would pass "
                f"max_sequence_state_bytes={limits.max_state_bytes} ({self._state_bytes} held)"
            )
        seq = _Sequence(sid, self._initial, needed, self._clock())
        self._live[sid] = seq
        self._released.pop(sid, None)
        self._state_bytes += needed
        self._arm(seq, self._spec.idle_s)
        return seq

    def _fed_besides(self, sid: SequenceId) -> int:
        """Bytes a request of `sid` is queued with besides its inputs (state, controls): held too."""
        seq = self._live.get(sid) or _Sequence(sid, self._initial, 0, 0.0)
        return input_bytes(self._feed(seq, {}, False, False))  # as the queue will count them

    def _feed(self, seq: _Sequence, inputs: Tensors, start: bool, end: bool) -> dict[str, Array]:
        feed = dict(inputs)
        feed.update(seq.state)
        for control in self._spec.controls:
            kind = control.kind
            if kind is ControlKind.CORRID:
                feed[control.name] = _corrid(control.name, control.dtype, seq.sid, self._control_shape)
            else:
                on = kind is ControlKind.READY or (start if kind is ControlKind.START else end)
                feed[control.name] = self._flags[control.name][on]
        return feed

    def _keep_state(self, seq: _Sequence, outputs: Tensors) -> dict[str, Array]:
        """Take the state outputs into the sequence's state; the rest is the caller's."""
        if seq.released:  # released while it ran (its stream ended): nothing to keep
            return {k: v for k, v in outputs.items() if k not in self._state_outputs}
        state: dict[str, Array] = {}
        nbytes = 0
        for spec in self._spec.states:
            # A copy: the output is a view into the whole batch's array.
            value = np.array(outputs[spec.output_name], copy=True)
            state[spec.input_name] = value
            nbytes += state_bytes(value)
        if self._state_bytes - seq.nbytes + nbytes > self._limits.max_state_bytes:
            self._release(seq, "its state outgrew max_sequence_state_bytes")
            raise SequenceLimitReached(
                f"model '{self._model}': sequence {seq.sid!r}'s state grew to {nbytes} bytes, past "
                f"max_sequence_state_bytes={self._limits.max_state_bytes}; the sequence was released"
            )
        self._set_state(seq, state, nbytes)
        return {k: v for k, v in outputs.items() if k not in self._state_outputs}

    def _set_state(self, seq: _Sequence, state: dict[str, Array], nbytes: int) -> None:
        self._state_bytes += nbytes - seq.nbytes
        seq.state, seq.nbytes = state, nbytes

    # -- release ------------------------------------------------------------------------------

    def _release(self, seq: _Sequence, why: str) -> None:
        if seq.released:
            return
        seq.released = True
        if seq.timer is not None:
            seq.timer.cancel()
            seq.timer = None
        self._live.pop(seq.sid, None)
        self._state_bytes -= seq.nbytes
        seq.state, seq.nbytes = {}, 0
        self._released[seq.sid] = why
        while len(self._released) > REMEMBER_RELEASED:
            self._released.popitem(last=False)
        self._gone(seq.sid)

    def _gone(self, sid: SequenceId) -> None:
        if self.on_gone is not None:
            self.on_gone(sid)

    def _arm(self, seq: _Sequence, delay_s: float) -> None:
        if seq.timer is not None:
            seq.timer.cancel()
        schedule = self._schedule or asyncio.get_running_loop().call_later
        seq.timer = schedule(delay_s, lambda: self._idle_check(seq))

    def _idle_check(self, seq: _Sequence) -> None:
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
        """Triton's words, then why the sequence is not live."""
        return not_live(self._model, sid, self._released.get(sid, NEVER_STARTED + self._unknown_hint))


def _corrid(name: str, dtype: np.dtype[np.generic], sid: SequenceId, shape: tuple[int, ...]) -> Array:
    if dtype.kind == "O":  # TYPE_STRING: the id's text
        return np.full(shape, str(sid).encode(), dtype=object)
    if isinstance(sid, str):
        raise SequenceError(
            f"sequence {sid!r}: control input '{name}' (CONTROL_SEQUENCE_CORRID) takes integer "
            "correlation ids; send sequence_id as an integer"
        )
    info = np.iinfo(dtype.type) if dtype.kind in "iu" else None  # type: ignore[type-var]
    if info is not None and not info.min <= sid <= info.max:
        raise SequenceError(
            f"sequence_id {sid} does not fit control input '{name}' ({dtype.name}, CONTROL_SEQUENCE_CORRID)"
        )
    return np.full(shape, sid, dtype)
