"""A request continuing a sequence, to a lazy sequence model not loaded: refused without loading it
when no sequence of that id can be live once it has loaded (server/protocol/load_wait.py's
`await_load`).

A model not loaded holds no live sequence: one never loaded never opened any, an evicted one's
ended with its eviction. So a request that is not a `sequence_start`, for an id whose start is not
waiting for the same load, is what the loaded model's sequence batcher refuses ("must specify the
START flag ... it is not live"); it had loaded the model (evicting others) to hear it. Its message
is the loaded one's: why the id's sequence ended, as the retired versions told the sequence routing
(an eviction, an end, an idle release), else "never started". A start waiting for the load holds
its id (`hold`): a continuation sent after it on a stream waits for the load too, as it would wait
for its turn behind the start on a loaded model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from batcher.sequence_types import NEVER_STARTED, SequenceId, not_live
from server.models.sequence_routing import SequenceRouting
from server.protocol.sequence_params import SequenceParams


class SequencesBeforeLoad:
    """Per lazy model not loaded: the sequence ids whose starts wait for its load."""

    def __init__(self, routing: SequenceRouting, unknown_hint: str = "") -> None:
        """`routing`: the server's sequence routing (why retired versions' sequences ended);
        `unknown_hint`: what the loaded batchers add to "never started" (sequence_config.py)."""
        self._routing = routing
        self._unknown_hint = unknown_hint
        self._starts: dict[str, Counter[SequenceId]] = {}

    @contextmanager
    def hold(self, name: str, sequence: SequenceParams | None) -> Iterator[None]:
        """While a request for model `name` waits for its load: if it starts a sequence, its id is
        held (a continuation of it is not refused meanwhile)."""
        if sequence is None or not sequence.start:
            yield
            return
        starts = self._starts.setdefault(name, Counter())
        starts[sequence.sid] += 1
        try:
            yield
        finally:
            starts[sequence.sid] -= 1
            if starts[sequence.sid] <= 0:
                del starts[sequence.sid]
            if not starts:
                self._starts.pop(name, None)

    def follows_start(self, name: str, sequence: SequenceParams | None) -> bool:
        """A continuation whose start waits for model `name`'s load: once loaded it goes where its
        start went, not where the traffic policy would route it."""
        return sequence is not None and not sequence.start and sequence.sid in self._starts.get(name, ())

    def check(self, name: str, sequence: SequenceParams | None) -> None:
        """Raise UnknownSequence, as the loaded model's batcher would, for a request continuing a
        sequence (not a start) of model `name`, not loaded now, whose start is not waiting for the
        load. Call it only while the model is not loaded, after the request's other checks."""
        if sequence is None or sequence.start or sequence.sid in self._starts.get(name, ()):
            return
        why = self._routing.ended_why(name, sequence.sid)
        raise not_live(name, sequence.sid, NEVER_STARTED + self._unknown_hint if why is None else why)
