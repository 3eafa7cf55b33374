"""The sequence batcher's vocabulary: what a model's sequence_batching asks for, the CORRID
control input an id fills, and its errors.

Built by the server from config.pbtxt (server/models/sequence_config.py); read by
batcher/sequence.py. Tensors are batch-first here: one sequence is one row.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from batcher.errors import BatcherError, BatcherStopped
from batcher.types import Array

# A sequence's correlation id: Triton takes an unsigned integer or a string (distinct kinds).
SequenceId = int | str


class ControlKind(enum.Enum):
    START = "CONTROL_SEQUENCE_START"
    END = "CONTROL_SEQUENCE_END"
    READY = "CONTROL_SEQUENCE_READY"
    CORRID = "CONTROL_SEQUENCE_CORRID"


@dataclass(frozen=True, slots=True)
class ControlSpec:
    """A graph input the server fills for each row: a flag's false/true value, or the sequence id."""

    name: str
    kind: ControlKind
    dtype: np.dtype[np.generic]
    false_value: float | int | bool = 0
    true_value: float | int | bool = 1


@dataclass(frozen=True, slots=True)
class StateSpec:
    """Implicit state: output `output_name` of one run is input `input_name` of the sequence's next.

    `initial` is one sequence's starting value with its batch dimension (shape (1, *dims)), or
    without one (shape dims) for a model without a batch dimension."""

    input_name: str
    output_name: str
    initial: Array


@dataclass(frozen=True, slots=True)
class SequenceSpec:
    controls: tuple[ControlSpec, ...]
    states: tuple[StateSpec, ...]
    idle_s: float  # a sequence with no request for this long is released
    # False for a model without a batch dimension (max_batch_size 0): a request is the whole run,
    # and control and state tensors have no leading row axis.
    batched: bool = True
    # State outputs the config also lists as outputs: answered to the client too, as Triton does.
    answered_states: frozenset[str] = frozenset()

    @property
    def initial_bytes(self) -> int:
        return sum(state_bytes(s.initial) for s in self.states)


def taken_state(states: tuple[StateSpec, ...], outputs: Mapping[str, Array]) -> tuple[dict[str, Array], int]:
    """A run's state outputs as the next state (by state input name) and its bytes."""
    state: dict[str, Array] = {}
    nbytes = 0
    for spec in states:
        # A copy: the output is a view into the whole batch's array.
        value = np.array(outputs[spec.output_name], copy=True)
        state[spec.input_name] = value
        nbytes += state_bytes(value)
    return state, nbytes


def state_bytes(value: Array) -> int:
    """The bytes a state tensor holds: its elements' lengths for STRING (object) tensors."""
    if value.dtype.kind == "O":
        items: list[bytes | str] = value.ravel().tolist()
        return sum(len(item) for item in items)
    return int(value.nbytes)


@dataclass(frozen=True, slots=True)
class SequenceLimits:
    max_sequences: int  # live sequences of one model version
    max_state_bytes: int  # state bytes those sequences hold


class Timer(Protocol):
    def cancel(self) -> None: ...


class LiveSequence:
    """A live sequence of a SequenceBatcher (batcher/sequence.py): its state and idle timer."""

    __slots__ = ("last_used", "nbytes", "owner", "released", "sid", "state", "timer")

    def __init__(self, sid: SequenceId, state: dict[str, Array], nbytes: int, now: float) -> None:
        self.sid = sid
        self.state = state  # by state input name, batch-first, one row; replaced, never mutated
        self.nbytes = nbytes
        self.last_used = now
        self.timer: Timer | None = None
        self.released = False
        self.owner: object | None = None  # who sent its latest start (a stream), if anyone said


class SequenceError(BatcherError):
    """A sequence request the model cannot take as sent (INVALID_ARGUMENT): the message says why."""

    default_message = "invalid sequence request"


def sid_text(sid: SequenceId) -> str:
    """A sequence id as messages name it: a string id quoted (as Python writes it), so "5" is not
    read as integer 5, nor "x y" as two words."""
    return repr(sid) if isinstance(sid, str) else str(sid)


def check_one_row(model: str, sid: SequenceId, rows: int) -> None:
    """A sequence's request holds one row (its sequence's slot in a batch): SequenceError otherwise,
    in Triton's words, then the rows. Also judged before a lazy model's load (server/protocol/declared.py)."""
    if rows != 1:
        raise SequenceError(
            f"inference request to model '{model}' must specify batch-size 1 due to "
            f"requirements of sequence batcher (sequence {sid_text(sid)}: got {rows} rows)"
        )


def corrid_input(name: str, dtype: np.dtype[np.generic], sid: SequenceId, shape: tuple[int, ...]) -> Array:
    """Control input `name` (CONTROL_SEQUENCE_CORRID, of `dtype`) holding sequence id `sid`."""
    if dtype.kind == "O":  # TYPE_STRING: the id's text, every byte of it
        # Filled, not np.full: that converts the bytes to numpy's 'S' type first, which drops
        # trailing NULs ("a\x00" reached the model as b"a", "\x00" as b"", the id of no sequence).
        corrid = np.empty(shape, dtype=object)
        corrid.fill(str(sid).encode())
        return corrid
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


class UnknownSequence(SequenceError):
    """Not the start of a sequence, and its id names no live sequence (never started, ended, or
    released: the message says which, when the server still remembers)."""


NEVER_STARTED = "it was never started (or was released long ago)"
# Why a stopped model version's sequences ended (SequenceBatcher.close), unless its caller says more.
RETIRED = "the model version serving it was unloaded or replaced"


def not_live(model: str, sid: SequenceId, why: str) -> UnknownSequence:
    """A request continuing sequence `sid`, not live: Triton's words, then `why`. Also answered for
    a lazy model before its load (server/models/lazy_sequences.py), so both say the same."""
    return UnknownSequence(
        f"inference request for sequence {sid_text(sid)} to model '{model}' must specify the START "
        f"flag on the first request of the sequence (sequence_start): it is not live: {why}"
    )


class SequenceRetired(BatcherStopped):
    """A request of a live sequence, queued behind the sequence's earlier requests when its model
    version was retired (an unload, a reload that replaced it, an eviction), that the version did
    not run before it went: UNAVAILABLE. The client did nothing wrong (it had been INVALID_ARGUMENT
    "must specify the START flag"), but the sequence's state went with the version, so the request
    is not to be sent again as is (ErrorInfo SEQUENCE_RETIRED): the sequence starts again."""

    default_message = "the sequence's model version was retired before this request ran"
    error_reason = "SEQUENCE_RETIRED"


def retired(model: str, sid: SequenceId, why: str) -> SequenceRetired:
    """A request of sequence `sid` that waited for its turn while the sequence ended (`why`)."""
    return SequenceRetired(
        f"sequence {sid_text(sid)} of model '{model}' ended while this request waited for its turn: "
        f"{why}; the request was not run: start the sequence again (sequence_start)"
    )


class SequenceLimitReached(BatcherError):
    """Starting or growing a sequence would pass max_sequences or max_sequence_state_bytes."""

    default_message = "too many live sequences"


def control_flags(controls: Sequence[ControlSpec], shape: tuple[int, ...]) -> dict[str, tuple[Array, Array]]:
    """The constant control tensors of one row, each flag's false and true values (CORRID aside)."""
    return {
        c.name: (np.full(shape, c.false_value, c.dtype), np.full(shape, c.true_value, c.dtype))
        for c in controls
        if c.kind is not ControlKind.CORRID
    }
