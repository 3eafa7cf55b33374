"""Whether a lazy ensemble not loaded would load: its load plans its steps against its step models'
configs (ensemble_config.plan_ensemble), and a plan that fails (a step input whose data type or
shape is not what the ensemble maps into it, a step model missing or not ready) fails the load, so
every request is answered UNAVAILABLE with the load's message, as Triton answers for a model that
failed to load. The same plan is checked here from configs alone (no load, no session): the loaded
step models' configs as they serve them, the lazy ones' as their next load would complete them
(lazy_signatures.py). An ensemble whose plan fails is not judged early (its load says what is
wrong): it had refused an invalid request by its own signature, where its load would fail.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from protos import model_config_pb2 as mc
from server.models.config_errors import ConfigError
from server.models.ensemble_config import Step, is_ensemble, plan_ensemble
from server.models.footprint import source_key
from server.models.repository import ModelSource, load_model_source
from server.models.versions import READY, ModelEntry

Complete = Callable[[ModelSource, int], mc.ModelConfig]  # a version's config as its load completes it


@dataclass(frozen=True, slots=True)
class StepModels:
    """The models an ensemble's steps may use, as its load would find them now (taken on the event
    loop): the loaded ones' configs, and the lazy ones not loaded (its load loads them first)."""

    loaded: Mapping[str, tuple[int, Mapping[int, mc.ModelConfig]]]  # name -> (newest, configs)
    lazy: frozenset[str]

    @classmethod
    def of(cls, entries: Iterable[ModelEntry], lazy: Iterable[str]) -> StepModels:
        loaded, dormant = {}, set()
        for entry in entries:
            if entry.state == READY and entry.order:
                loaded[entry.name] = (entry.order[0], {n: v.config for n, v in entry.versions.items()})
            elif entry.dormant:
                dormant.add(entry.name)
        return cls(loaded, frozenset(dormant & set(lazy)))


def plan_refusal(
    source: ModelSource,
    root: Path,
    models: StepModels,
    complete: Complete,
    within: frozenset[str] = frozenset(),
) -> str | None:
    """What the load of ensemble `source` would fail with while planning its steps; None when the
    plan holds. Blocks (reads the step models' files): call it off the event loop."""

    def step_config(step: Step) -> mc.ModelConfig:
        number = int(step.version) if step.version else None
        known = models.loaded.get(step.model)
        if known is not None:
            newest, configs = known
            config = configs.get(newest if number is None else number)
            if config is None:
                raise ConfigError(f"version {number} is not served")
            return config
        if step.model not in models.lazy:
            raise ConfigError("not ready")  # the load's own message says which
        step_source = load_model_source(root, step.model)
        number = max(step_source.versions, default=0) if number is None else number
        if number not in step_source.versions:
            raise ConfigError(f"version {number} is not served")
        if is_ensemble(step_source.config):  # a nested ensemble not loaded: its own plan first
            if step.model in within:
                raise ConfigError("ensembles use each other")
            why = plan_refusal(step_source, root, models, complete, within | {source.name})
            if why is not None:
                raise ConfigError(why)
            return step_source.config
        return complete(step_source, number)

    try:
        plan_ensemble(source.config, source.where, step_config)
    except Exception as exc:  # ConfigError, a step's files unreadable: its load fails too
        return str(exc) or type(exc).__name__
    return None


class PlanCheck:
    """`refusal` off the event loop, with the step models' completed configs kept per set of files
    (completing one reads its ONNX graph)."""

    def __init__(self, root: Path, complete: Complete) -> None:
        self._root = root
        self._complete = complete
        self._completed: dict[tuple[str, int], tuple[object, mc.ModelConfig]] = {}

    async def refusal(
        self, source: ModelSource, entries: Iterable[ModelEntry], lazy: Iterable[str]
    ) -> str | None:
        """What ensemble `source`'s load would fail with planning its steps, with the models
        `entries` and the lazy ones as they are now; None when its plan holds."""
        models = StepModels.of(entries, lazy)  # on the event loop, where they change
        return await asyncio.to_thread(plan_refusal, source, self._root, models, self._completed_config)

    def _completed_config(self, source: ModelSource, number: int) -> mc.ModelConfig:
        key = source_key(source)
        known = self._completed.get((source.name, number))
        if known is not None and known[0] == key:
            return known[1]
        config = self._complete(source, number)
        self._completed[(source.name, number)] = (key, config)  # the last files' only: bounded
        return config
