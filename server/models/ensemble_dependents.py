"""EnsembleDependents: which models each ensemble's steps use, and what their loads and unloads do
to the ensembles.

Separate from the manager (manager.py) because it is one rule of its own over the loaded models,
as Triton has it: an ensemble that failed for want of a step model loads again once that model
loads, and a READY ensemble whose step model goes becomes UNAVAILABLE (and loads again with it).
The manager does the loading and retiring; this module decides which ensembles, in which order.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from protos import model_config_pb2 as mc
from server.models.config import ConfigError
from server.models.ensemble_config import ensemble_cycle, is_ensemble
from server.models.repository import OVERRIDE_WHERE, ModelSource
from server.models.versions import READY, UNAVAILABLE, ModelEntry

if TYPE_CHECKING:
    from server.models.manager import HealthCallback
    from server.models.versions import ModelVersion

log = logging.getLogger(__name__)

LoadAgain = Callable[[str], Awaitable[bool]]  # load a model from the repository again: READY?
Retire = Callable[[Iterable["ModelVersion"]], Awaitable[None]]


class EnsembleDependents:
    """The step models of every ensemble loaded (or tried), over the manager's `models` index."""

    def __init__(self, models: Mapping[str, ModelEntry], on_health: HealthCallback) -> None:
        self._models = models
        self._on_health = on_health
        # Ensemble -> the models its steps name, as last loaded (whatever the outcome): one that
        # failed for want of a step model is loaded again once that model loads (as Triton does).
        self._steps: dict[str, frozenset[str]] = {}
        # Ensemble -> the source it was last loaded from where a RepositoryModelLoad gave it (a
        # `config`, files): loaded again from it, not from the repository (a tester, session 53: an
        # ensemble given a config pinning version 2 came back from its config.pbtxt pinning 1, and
        # one sent only as files never came back).
        self._given: dict[str, ModelSource] = {}

    def note(self, source: ModelSource) -> None:
        """`source` is being loaded: when it is an ensemble, its steps are what it uses now."""
        if is_ensemble(source.config):
            self._steps[source.name] = frozenset(s.model_name for s in source.config.ensemble_scheduling.step)
            if source.where == OVERRIDE_WHERE:
                self._given[source.name] = source
            else:
                self._given.pop(source.name, None)

    def given(self, name: str) -> ModelSource | None:
        """The source ensemble `name` was last loaded from, where a RepositoryModelLoad gave it."""
        return self._given.get(name)

    def refuse_cycle(self, source: ModelSource) -> None:
        """ConfigError when ensemble `source` would reach itself through the versions serving now:
        the repository's configs alone missed a cycle closed by a RepositoryModelLoad `config`
        override (or a step changed on disk since it loaded), and one request then nested the
        ensembles without end (1.8 GB and a server SIGTERM no longer stopped, in 5 s)."""
        if not is_ensemble(source.config):
            return
        configs = {name: _steps_served(entry) for name, entry in self._models.items() if entry.versions}
        cycle = ensemble_cycle(source.name, {**configs, source.name: source.config})
        if cycle is not None:
            raise ConfigError(
                f"{source.where}: ensemble '{source.name}' would be in a cycle of ensembles with the "
                f"versions serving now: {' -> '.join(cycle)} (an ensemble cannot reach itself "
                "through its steps; change a step, or load the other ensembles again first)"
            )

    def steps(self, name: str) -> frozenset[str]:
        """The models `name`'s steps use (none when it is no ensemble)."""
        return self._steps.get(name, frozenset())

    def above(self, model: str) -> set[str]:
        """Every ensemble whose steps reach `model`, however deeply nested, in any state: those
        whose cached answers a change of `model` makes stale."""
        found: set[str] = set()
        pending = [model]
        while pending:
            used = pending.pop()
            for name, steps in self._steps.items():
                if used in steps and name not in found:
                    found.add(name)
                    pending.append(name)
        return found

    def using(self, model: str) -> list[str]:
        """The loaded ensembles whose steps use `model`."""
        return [
            name
            for name, steps in self._steps.items()
            if model in steps and name in self._models and self._models[name].state == READY
        ]

    async def load_waiting(self, loaded: str, load_again: LoadAgain) -> None:
        """Load again the ensembles that are unavailable and use `loaded` (and, as they come up,
        those nesting them), unless another of their steps is a lazy model not loaded. Bounded:
        each ensemble is tried at most once per call."""
        ready, tried = [loaded], set()
        while ready:
            model = ready.pop()
            for ensemble, steps in sorted(self._steps.items()):
                entry = self._models.get(ensemble)
                waiting = entry is not None and entry.failed_or_waiting
                if model not in steps or not waiting or ensemble in tried or self._dormant_step(steps):
                    continue
                tried.add(ensemble)
                if await load_again(ensemble):
                    log.info("ensemble %s loaded now that %s is ready", ensemble, model)
                    ready.append(ensemble)

    def _dormant_step(self, steps: frozenset[str]) -> bool:
        """One of `steps` is a lazy model not loaded: the ensemble's load would fail for want of it
        and leave it failed for good (no longer lazy: its requests no longer load its steps); it
        stays lazy, and its next request loads its steps, then it (server/models/lazy.py)."""
        return any(step in self._models and self._models[step].dormant for step in steps)

    async def stop_dependent(self, gone: str, evicted: bool, retire: Retire) -> None:
        """The READY ensembles whose steps use `gone` (and those nesting them) become UNAVAILABLE,
        saying why: they stayed READY, ServerReady true, and failed every request. They load again
        with it (load_waiting)."""
        why = f"its step model '{gone}' is not loaded; it loads again with it"
        for ensemble in self.using(gone):
            await self._stop(ensemble, why, evicted, retire)

    async def stop_unserved(self, loaded: str, retire: Retire) -> None:
        """The READY ensembles with a step pinned to a version of `loaded` that its load no longer
        serves (a reload with another version policy, a new version past `latest { num_versions: 1
        }`) become UNAVAILABLE as stop_dependent's do: they had stayed READY, ServerReady and
        their health true, and failed every request UNAVAILABLE (a tester, session 53). The manager
        loads them again at once (load_waiting): one whose config fits now serves on."""
        entry = self._models.get(loaded)
        served = set(entry.versions) if entry is not None and entry.state == READY else set()
        for ensemble in self.using(loaded):
            pinned = {
                step.model_version
                for version in self._models[ensemble].versions.values()
                for step in version.config.ensemble_scheduling.step
                if step.model_name == loaded and step.model_version > 0
            }
            missing = sorted(pinned - served)
            if missing:
                why = f"its step model '{loaded}' no longer serves version {missing[0]}; it loads again then"
                await self._stop(ensemble, why, False, retire)

    async def _stop(self, ensemble: str, why: str, evicted: bool, retire: Retire) -> None:
        """`ensemble` UNAVAILABLE for `why`, its versions retired, and the READY ensembles nesting it
        after it."""
        entry = self._models[ensemble]
        entry.state, entry.dormant = UNAVAILABLE, True  # by design: ServerReady passes over it
        entry.reason = why
        # An eviction is the budget at work (a note); an unload, an operator's act (a warning).
        log.log(logging.INFO if evicted else logging.WARNING, "ensemble %s unavailable: %s", ensemble, why)
        self._on_health(ensemble, False)
        await retire(entry.versions.values())
        entry.versions.clear()
        entry.order.clear()
        for nesting in self.using(ensemble):
            await self._stop(nesting, f"its step model '{ensemble}' is not loaded; it loads again with it",
                             evicted, retire)  # fmt: skip


def _steps_served(entry: ModelEntry) -> mc.ModelConfig:
    """One config whose steps are every serving version's (a step naming no version may be routed
    to any of them): what a request to `entry` can reach."""
    served = mc.ModelConfig(name=entry.name)
    for version in entry.versions.values():
        if is_ensemble(version.config):
            served.platform = version.config.platform
            served.ensemble_scheduling.step.extend(version.config.ensemble_scheduling.step)
    return served
