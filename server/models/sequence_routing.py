"""Which version of a model serves a sequence's request, and what the versions a reload or unload
retired said about their sequences.

A sequence's state lives in one version's SequenceBatcher (batcher/sequence.py), so a request
continuing it must reach that version whatever the traffic policy says now: a weight change
(an operator's ramp, a rollback) moved sticky keys to the other version, where 39 of 48 live
sequences were then told "it was never started". A sequence's start is noted with the version it
goes to (the policy's, or the one it names), before it runs: a stream's next requests are routed
as they are read. A continuation goes to the noted version while it is served, else to a version
where the sequence is live, else to one that remembers releasing it (it says why), else by the
policy (its version was reloaded or unloaded: the new one says so).

A note lives as long as its sequence: the version's batcher says when the sequence is gone
(ended, idle, released, or its start opened nothing), and the note goes. Notes are kept per model
and bounded by what its versions can hold, so only starts never ended and not yet released (a
pathological client) reach the bound, and one model's churn never drops another's notes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from batcher.sequence import REMEMBER_RELEASED
from batcher.sequence_types import RETIRED, SequenceId

if TYPE_CHECKING:
    from server.models.routing_key import RoutedRequest
    from server.models.versions import ModelEntry, ModelVersion
    from server.protocol.sequence_params import SequenceParams

# Notes beyond what a model's versions hold live (sum of max_sequences): starts noted but not yet
# run (pipelined on streams), or whose sequences are still queued. An id is at most 1 KiB.
NOTE_SLACK = 1024

Policy = Callable[["ModelEntry", "RoutedRequest", "float | None"], int]  # Rollout.route

# Why a version the memory budget evicted ended its sequences (`retire`'s `why`): they had been
# told "unloaded or replaced", as by an operator's unload, with nothing naming the budget.
EVICTED_SEQUENCE = (
    "the model version serving it was evicted to fit the memory budget (model_memory_budget_mb)"
)


@dataclass(frozen=True, slots=True)
class Routed:
    """A request to route, with its sequence parameters as parsed once for it (None: it names no
    sequence, or names one wrongly: it is refused against its version, naming the parameter)."""

    request: RoutedRequest
    sequence: SequenceParams | None
    # The random point its lazy model's early judge drew to route it (None: none drawn): the
    # policy routes by it, so the version it was judged by serves it (Rollout.route).
    point: float | None = None

    @property
    def id(self) -> str:
        return self.request.id

    @property
    def parameters(self) -> Mapping[str, object]:
        return self.request.parameters


class SequenceRouting:
    """The version each routed sequence started on (per model, while it lives), and why retired
    versions' sequences ended, for the versions that follow them."""

    def __init__(self, slack: int = NOTE_SLACK) -> None:
        self._slack = slack
        self._started: dict[str, OrderedDict[SequenceId, int]] = {}
        self._ended: dict[str, OrderedDict[SequenceId, str]] = {}

    # -- routing ------------------------------------------------------------------------------

    def route(self, entry: ModelEntry, routed: Routed, policy: Policy) -> int:
        """The version number for a request that names none: the policy's, except for a
        continuation of a sequence started, live or ended on a served version."""
        # Asked every time: routing is also when the policy closes its rollback window.
        chosen = policy(entry, routed.request, routed.point)  # the point drawn before a lazy load
        sequence = _sequence_of(entry, routed)
        if sequence is None:
            return chosen
        if sequence.start:
            self._note(entry, sequence.sid, chosen)
            return chosen
        number = self._continued_on(entry, sequence.sid)
        return chosen if number is None else number

    def note(self, entry: ModelEntry, routed: Routed, number: int) -> None:
        """A request naming version `number`: a start there is noted like a routed one."""
        sequence = _sequence_of(entry, routed)
        if sequence is not None and sequence.start:
            self._note(entry, sequence.sid, number)

    def refused(self, version: ModelVersion, routed: Routed) -> None:
        """`routed` was refused before it reached `version`'s batcher: a start's note goes."""
        if routed.sequence is not None and routed.sequence.start:
            self._gone(version.name, version.version, routed.sequence.sid)

    def follow(self, version: ModelVersion) -> None:
        """Forget a note once its sequence is gone from `version` (its batcher says so)."""
        if version.sequences is not None:
            version.sequences.on_gone = partial(self._gone, version.name, version.version)

    def forget(self, name: str) -> None:
        """The model was unloaded: its notes go."""
        self._started.pop(name, None)

    def noted(self, name: str) -> int:
        """How many starts of model `name` are noted now."""
        return len(self._started.get(name, ()))

    def _continued_on(self, entry: ModelEntry, sid: SequenceId) -> int | None:
        notes = self._started.get(entry.name)
        number = None if notes is None else notes.get(sid)
        if number is not None and number in entry.versions:
            return number
        number = _live_on(entry, sid)
        if number is not None:  # its note was dropped at the bound: it is found where it lives
            self._note(entry, sid, number)
            return number
        return _released_on(entry, sid)  # not noted: it ended, and that version says why

    def _note(self, entry: ModelEntry, sid: SequenceId, number: int) -> None:
        notes = self._started.setdefault(entry.name, OrderedDict())
        notes[sid] = number
        notes.move_to_end(sid)
        bound = self._slack + sum(
            v.sequences.max_sequences for v in entry.versions.values() if v.sequences is not None
        )
        while len(notes) > bound:  # starts never ended nor released: the oldest go
            notes.popitem(last=False)

    def _gone(self, name: str, number: int, sid: SequenceId) -> None:
        """Sequence `sid` is not live on version `number` of `name`: a note naming it goes (one
        naming another version is a later start's)."""
        notes = self._started.get(name)
        if notes is not None and notes.get(sid) == number:
            del notes[sid]
            if not notes:
                del self._started[name]

    # -- retired versions ---------------------------------------------------------------------

    def retire(self, version: ModelVersion, why: str = RETIRED) -> None:
        """End `version`'s sequences (it is being retired; those with requests queued once they have
        run, within the grace: Retirement.retire) and keep `why`, for its successors. Its batcher
        opens no sequence after this (a start is handed to the version serving now)."""
        if version.sequences is None:
            return
        version.sequences.close(why)
        ended = self._ended.setdefault(version.name, OrderedDict())
        ended.update(version.sequences.released())
        while len(ended) > REMEMBER_RELEASED:
            ended.popitem(last=False)

    def ended_why(self, name: str, sid: SequenceId) -> str | None:
        """Why retired versions of `name` (an unload, an eviction) ended sequence `sid`, when
        remembered and not yet handed over: what the next load's versions will say."""
        ended = self._ended.get(name)
        return None if ended is None else ended.get(sid)

    def hand_over(self, name: str, versions: Iterable[ModelVersion]) -> None:
        """The retired versions' record goes to `versions`, the model's serving ones: a continuation
        of a sequence a reload or unload ended is told so, not "never started". Called before the
        retired versions drain: requests reach the new versions meanwhile."""
        ended = self._ended.pop(name, None)
        if ended:
            for version in versions:
                if version.sequences is not None:
                    version.sequences.remember(ended)


def _sequence_of(entry: ModelEntry, routed: Routed) -> SequenceParams | None:
    """The routed request's sequence; None for a model without sequences (it is refused there)."""
    if routed.sequence is None or not any(v.sequences is not None for v in entry.versions.values()):
        return None
    return routed.sequence


def _live_on(entry: ModelEntry, sid: SequenceId) -> int | None:
    """The newest served version where sequence `sid` is live."""
    for number in entry.order:
        sequences = entry.versions[number].sequences
        if sequences is not None and sequences.is_live(sid):
            return number
    return None


def _released_on(entry: ModelEntry, sid: SequenceId) -> int | None:
    """The newest served version that remembers releasing sequence `sid`."""
    for number in entry.order:
        sequences = entry.versions[number].sequences
        if sequences is not None and sequences.remembers(sid):
            return number
    return None
