"""Which loaded models the memory budget must not evict now (server/models/lazy.py), besides the
pinned ones: models in use, and the models an ensemble needs while it loads or serves.

A model is in use while it has requests queued or running. An ensemble's request uses every one of
its step models from its start to its end, also between two steps, when no step model holds it in
a queue: it is counted once, on the ensemble (EnsembleScheduler.in_flight), and a step model is in
use while an ensemble using it (or one nesting that one) has requests in flight. Counting it on the
ensemble costs one increment a request, whatever its steps; an eviction, rare, asks the question.
An evicted step had failed such a request UNAVAILABLE "not ready (unloaded)" between its steps.

An ensemble being loaded holds itself and its step models (`hold`) until its load ends: the load of
its second step had evicted its first (the least recently used), and the ensemble's load then
failed for want of it (and stayed failed).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Protocol

from server.errors import ModelNotFound
from server.models.versions import ModelEntry, ModelVersion


class Models(Protocol):
    """The part of the ModelManager (manager.py) the guard reads."""

    def entry(self, name: str) -> ModelEntry: ...

    def ensembles_using(self, model: str) -> list[str]: ...


class EvictionGuard:
    """Models held by loads under way, and the rule saying which models are busy now."""

    def __init__(self, models: Models) -> None:
        self._models = models
        self._held: Counter[str] = Counter()  # model -> loads under way holding it

    @contextmanager
    def hold(self, names: Iterable[str]) -> Iterator[None]:
        """Keep `names` from eviction while the block runs (nested holds add up)."""
        held = list(names)
        self._held.update(held)
        try:
            yield
        finally:
            self._held.subtract(held)
            for name in held:
                if self._held[name] <= 0:
                    del self._held[name]

    def held(self, name: str) -> bool:
        return self._held[name] > 0

    def busy(self, name: str) -> bool:
        """`name` may not be evicted now: it is held, has requests queued or running, or a loaded
        ensemble using it (directly or nesting one that does) is held or has requests in flight."""
        return self._busy(name, set())

    def ensembles_over(self, name: str) -> list[str]:
        """The loaded ensembles using `name`, directly or nesting one that does."""
        found: list[str] = []
        below = [name]
        while below:
            for ensemble in self._models.ensembles_using(below.pop()):
                if ensemble not in found and ensemble != name:
                    found.append(ensemble)
                    below.append(ensemble)
        return found

    def _busy(self, name: str, seen: set[str]) -> bool:
        if name in seen:  # a cycle of ensembles is refused at load; never loop on one
            return False
        seen.add(name)
        if self.held(name) or self._in_use(name):
            return True
        return any(self._busy(ensemble, seen) for ensemble in self._models.ensembles_using(name))

    def _in_use(self, name: str) -> bool:
        try:
            entry = self._models.entry(name)
        except ModelNotFound:
            return False
        return any(_serving(v) for v in entry.versions.values())


def _serving(version: ModelVersion) -> bool:
    """Requests queued or running on a version, or, for an ensemble, in flight through its steps."""
    batcher, ensemble = version.batcher, version.ensemble
    in_flight = 0 if ensemble is None else ensemble.in_flight
    return bool(batcher.queued_requests or batcher.in_flight_batches or in_flight)
