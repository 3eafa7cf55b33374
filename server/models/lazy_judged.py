"""What a request for a lazy model that is not loaded is judged by, without loading it.

Each lazy model's version signatures at its last load (with what that load read), or those its next
load would serve, read from its files when it was never loaded or they changed since; and how its
next load routes a request naming no version. An invalid request had loaded the model, evicting
others, only to be refused (server/protocol/request_path.py judges it by these).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import cast

from server.models.early_refusals import EarlyRefusals
from server.models.ensemble_config import is_ensemble
from server.models.footprint import source_key
from server.models.frame_rules import FrameRules, config_rules, version_rules
from server.models.lazy_plans import PlanCheck
from server.models.lazy_signatures import (
    FreshRuns,
    UnnamedRouting,
    completed_config,
    predicted_signatures,
    unnamed_routing,
)
from server.models.manager import ModelManager
from server.models.repository import ModelSource, load_model_source
from server.models.rollout_carry import carried_weights
from server.models.rollout_ops import generation_of
from server.models.rollout_shared_log import SharedLog
from server.models.versions import ModelVersion
from server.protocol.validate import Signature


class JudgedSignatures:
    def __init__(
        self,
        manager: ModelManager,
        root: Path,
        default_max_batch_size: int,
        refused_early: EarlyRefusals,
        lazy: Callable[[], set[str]],
    ) -> None:
        """`refused_early`: where the judge's refusals are counted (described from the config read
        here); `lazy`: the lazy models now, loaded or not (an ensemble's steps are judged by them)."""
        self._manager = manager
        self._root = root
        self._default_max_batch_size = default_max_batch_size
        self._refused_early = refused_early
        self._lazy = lazy
        self._loaded: dict[str, tuple[object, dict[int, Signature]]] = {}  # at the last load
        self._predicted: dict[str, tuple[object, dict[int, Signature] | None]] = {}  # from files
        self._reads = FreshRuns(self._current)  # one read for concurrent requests
        self._routing: dict[str, UnnamedRouting | None] = {}  # as the config last read says
        self._files: dict[str, dict[int, tuple[object, ...]]] = {}  # the versions' fingerprints then
        self._rules: dict[str, FrameRules | None] = {}  # latest-frame-wins, as last loaded or read
        # An ensemble whose load would fail planning its steps is not judged (lazy_plans.py).
        self._plans = PlanCheck(root, lambda s, n: completed_config(s, n, default_max_batch_size))

    async def get(self, name: str) -> dict[int, Signature] | None:
        """The signatures of the versions `name`'s next load would serve (each load reads the
        repository as it is then): its last load's if its config and files are the same now, else
        read from them without loading it; None when not known. Concurrent requests share a read
        that began after they came."""
        return await self._reads.get(name)

    def routing(self, name: str) -> UnnamedRouting | None:
        """How `name`'s next load routes a request naming no version, as its config read by `get`
        last said (None before, or when it could not be read), by the weights its load's state will
        route by where its config does not set them: an operator's or a rollback's kept through an
        eviction (rollout_carry.carried_weights), under --workers its generation's shared log's
        (read with the config: rollout_replay.py)."""
        routing = self._routing.get(name)
        rollout = self._manager.rollout
        if routing is None or rollout.shared is not None:
            return routing
        kept, files = rollout.kept(name), self._files.get(name, {})
        weights = None if kept is None else carried_weights(kept, routing.policy, files)
        return routing if weights is None else routing.weighed(weights)

    def frame_rules(self, name: str) -> FrameRules | None:
        """What latest-frame-wins knows of `name` while not loaded (frame_rules.py): its config as
        listed or last read, else its last load's (None: not known)."""
        return self._rules.get(name)

    def listed(self, source: ModelSource) -> None:
        """`source`'s model is listed, not loaded: its config read for the index says its rules."""
        self._rules[source.name] = config_rules(source.config, source.where)

    def loaded(self, name: str, key: object, versions: Mapping[int, ModelVersion]) -> None:
        """`name` was loaded from the files `key` names: what it serves is known now."""
        self._loaded[name] = (key, {number: v.signature for number, v in versions.items()})
        self._predicted.pop(name, None)
        if versions:  # one config for every version
            self._rules[name] = version_rules(next(iter(versions.values())))

    def forget(self, name: str) -> None:
        """`name` left the index."""
        self._loaded.pop(name, None)
        self._predicted.pop(name, None)
        self._rules.pop(name, None)
        self._files.pop(name, None)

    async def _current(self, name: str) -> dict[int, Signature] | None:
        shared = self._manager.rollout.shared

        def read() -> tuple[ModelSource, tuple[object, ...], UnnamedRouting | None]:
            source = load_model_source(self._root, name)
            key = source_key(source)
            return source, key, logged_routing(shared, source, key)

        try:
            source, key, routing = await asyncio.to_thread(read)
        except Exception:  # its load will say what is wrong
            self._routing.pop(name, None)
            self._files.pop(name, None)
            return None
        self._routing[name] = routing
        fingerprints = cast("tuple[tuple[object, ...], ...]", key)  # footprint.source_key's
        self._files[name] = dict(zip(sorted(source.versions), fingerprints, strict=True))
        self.listed(source)  # as its next load reads it
        self._refused_early.describe(name, source.config)  # its refusals' series: labels, cache
        if is_ensemble(source.config):  # a load failing to plan its steps says what is wrong
            refused = await self._plans.refusal(source, self._manager.entries(), self._lazy())
            if refused is not None:
                return None
        for known in (self._loaded.get(name), self._predicted.get(name)):
            if known is not None and known[0] == key:
                return known[1] or None
        limit = self._default_max_batch_size
        predicted = await asyncio.to_thread(predicted_signatures, source, limit)
        self._predicted[name] = (key, predicted)  # read once for these files (a graph may be big)
        return predicted


def logged_routing(
    shared: SharedLog | None, source: ModelSource, key: tuple[object, ...]
) -> UnnamedRouting | None:
    """`source`'s routing once loaded (unnamed_routing), under --workers (`shared`) by the weights
    its generation's log sets (the files `key` fingerprints, in version order: rollout_ops.generation).
    Reads files: off the event loop."""
    routing = unnamed_routing(source)
    if routing is None or shared is None:
        return routing
    files = generation_of(source.name, dict(zip(sorted(source.versions), key, strict=True)))
    config = None if routing.policy is None else routing.policy.weights
    weights = shared.logged_weights(source.name, files, config, routing.served)
    return routing if weights is None or not any(weights.values()) else routing.weighed(weights)
