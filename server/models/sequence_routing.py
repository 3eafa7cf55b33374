"""Which version of a model serves a sequence's request, and what the versions a reload or unload
retired said about their sequences.

A sequence's state lives in one version's SequenceBatcher (batcher/sequence.py), so a request
continuing it must reach that version whatever the traffic policy says now: a weight change
(an operator's ramp, a rollback) moved sticky keys to the other version, where 39 of 48 live
sequences were then told "it was never started". A sequence's start is routed by the policy and
the version it went to is noted (before it runs: a stream's next requests are routed as they are
read); a continuation goes to the noted version while it is served, else to a version where the
sequence is live, else by the policy (its version was reloaded or unloaded: the new one says so).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, cast

from batcher.sequence import REMEMBER_RELEASED
from batcher.sequence_types import SequenceId
from protos import grpc_service_pb2 as pb
from server.errors import InvalidRequest
from server.protocol.sequence_params import parse_sequence

if TYPE_CHECKING:
    from server.models.rollout import RoutedRequest
    from server.models.versions import ModelEntry, ModelVersion

# Noted starts kept (the oldest go first): an id is at most 1 KiB, so at most ~16 MiB. A sequence
# whose note went is still found where it is live.
MAX_NOTED_STARTS = 16384

Policy = Callable[["ModelEntry", "RoutedRequest"], int]


class SequenceRouting:
    """The version each routed sequence started on (per model), and why retired versions' sequences
    ended, for the versions that follow them."""

    def __init__(self, max_noted: int = MAX_NOTED_STARTS) -> None:
        self._max_noted = max_noted
        self._started: OrderedDict[tuple[str, SequenceId], int] = OrderedDict()
        self._ended: dict[str, OrderedDict[SequenceId, str]] = {}

    # -- routing ------------------------------------------------------------------------------

    def route(self, entry: ModelEntry, request: RoutedRequest, policy: Policy) -> int:
        """The version number for a request that names none: the policy's, except for a
        continuation of a sequence started or live on a served version."""
        # Asked every time: routing is also when the policy closes its rollback window.
        chosen = policy(entry, request)
        sid, start = self._sequence_of(entry, request)
        if sid is None:
            return chosen
        if start:
            self.started(entry.name, sid, chosen)
            return chosen
        number = self._started.get((entry.name, sid))
        if number is None or number not in entry.versions:
            number = _live_on(entry, sid)
        if number is None:  # ended with its version (the new one says so), or never started
            return chosen
        self.started(entry.name, sid, number)
        return number

    def note(self, entry: ModelEntry, request: RoutedRequest, number: int) -> None:
        """A request naming version `number`: a start there is noted like a routed one."""
        sid, start = self._sequence_of(entry, request)
        if sid is not None and start:
            self.started(entry.name, sid, number)

    def started(self, name: str, sid: SequenceId, number: int) -> None:
        key = (name, sid)
        self._started[key] = number
        self._started.move_to_end(key)
        while len(self._started) > self._max_noted:
            self._started.popitem(last=False)

    @staticmethod
    def _sequence_of(entry: ModelEntry, request: RoutedRequest) -> tuple[SequenceId | None, bool]:
        """The request's sequence id and start flag; (None, False) for a model without sequences,
        or parameters the request itself is refused for later (naming them, against its version)."""
        if not any(v.sequences is not None for v in entry.versions.values()):
            return None, False
        try:
            sequence = parse_sequence(cast(Mapping[str, pb.InferParameter], request.parameters))
        except InvalidRequest:
            return None, False
        return (None, False) if sequence is None else (sequence.sid, sequence.start)

    # -- retired versions ---------------------------------------------------------------------

    def retire(self, version: ModelVersion) -> None:
        """End `version`'s sequences (it is being retired) and keep why, for its successors. Its
        batcher opens no sequence after this (a start is handed to the version serving now)."""
        if version.sequences is None:
            return
        version.sequences.close()
        ended = self._ended.setdefault(version.name, OrderedDict())
        ended.update(version.sequences.released())
        while len(ended) > REMEMBER_RELEASED:
            ended.popitem(last=False)

    def hand_over(self, name: str, versions: Iterable[ModelVersion]) -> None:
        """The retired versions' record goes to `versions`, the model's serving ones: a continuation
        of a sequence a reload or unload ended is told so, not "never started". Called before the
        retired versions drain: requests reach the new versions meanwhile."""
        ended = self._ended.pop(name, None)
        if ended:
            for version in versions:
                if version.sequences is not None:
                    version.sequences.remember(ended)


def _live_on(entry: ModelEntry, sid: SequenceId) -> int | None:
    """The newest served version where sequence `sid` is live."""
    for number in entry.order:
        sequences = entry.versions[number].sequences
        if sequences is not None and sequences.is_live(sid):
            return number
    return None
