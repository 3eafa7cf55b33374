"""Loads under a memory budget, and lazy models loaded by their first request.

Every load and unload of a model goes through `ModelLoads` (start-up, RepositoryModelLoad, the
repository poller, first requests), one at a time: it makes room within the budget by evicting the
least recently used idle lazy models, loads, then records what the load cost (server/models/
footprint.py). A lazy model (`lazy_load: "true"`) waits in the index as UNAVAILABLE "not loaded
(lazy)" until a request for it arrives; concurrent first requests share one load task, and each
waits for it no longer than its own deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from batcher.run_count import RunCount
from protos import model_config_pb2 as mc
from server.backends.one_time_costs import OneTimeCosts, pay_one_time_costs
from server.errors import (
    MemoryBudgetExceeded,
    ModelLoadTimeout,
    ModelNotFound,
    ModelNotReady,
    OutgrowsMemoryBudget,
    RepositoryError,
    ShuttingDown,
    load_failure,
)
from server.models.config import DEFAULT_MAX_BATCH_SIZE, ConfigError
from server.models.early_refusals import EarlyRefusals
from server.models.ensemble_budget import judge_steps, step_models
from server.models.ensemble_config import is_ensemble
from server.models.eviction_guard import EvictionGuard
from server.models.footprint import LoadMeasure, files_and_key, memory_meter
from server.models.frame_rules import FrameRules
from server.models.lazy_flags import lazy_flags
from server.models.lazy_judged import JudgedSignatures
from server.models.lazy_signatures import UnnamedRouting
from server.models.load_metrics import Gauge, LoadStats, load_gauges
from server.models.manager import ModelManager
from server.models.memory_budget import MIB, MemoryBudget, for_ensembles, load_need, refusal
from server.models.repository import OVERRIDE_WHERE, ModelNotFoundInRepository, ModelSource, load_model_source
from server.models.versions import READY, UNAVAILABLE, ModelEntry
from server.protocol.validate import Signature

log = logging.getLogger(__name__)

NOT_LOADED = "not loaded (lazy): its first request loads it"
EVICTED = "not loaded (lazy): evicted to fit the memory budget; its next request loads it"


class ModelLoads:
    def __init__(
        self,
        manager: ModelManager,
        root: Path,
        budget_bytes: int,
        *,
        in_use: Callable[[], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
        default_max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        one_time_costs: Callable[[], None] = pay_one_time_costs,
        runs: RunCount | None = None,
    ) -> None:
        """`in_use`: the process's memory in use now, read around each load (footprint.py); `runs`:
        every model's backend runs (the manager's), read around it too: is its measure a verdict;
        `default_max_batch_size`: the setting a load completes configs with; `one_time_costs`: run
        once before the first load is measured, so that the first model is not charged them."""
        self._manager = manager
        self._root = root
        self._default_max_batch_size = default_max_batch_size
        self._in_use = in_use or memory_meter()
        self._measure = LoadMeasure(self._in_use)  # a reload measured before it retires the old
        manager.on_loaded = self._measure.loaded
        self._one_time_costs = OneTimeCosts(one_time_costs)
        self._clock = clock
        self._runs = runs if runs is not None else RunCount()
        self.budget = MemoryBudget(budget_bytes)
        self.stats = LoadStats()
        self._lazy: set[str] = set()  # lazy models, loaded or not
        self._pending: dict[str, asyncio.Task[None]] = {}  # first-request loads under way
        self._changes = asyncio.Lock()  # one load, unload or eviction at a time
        self._guard = EvictionGuard(manager)  # what may not be evicted now, besides pinned models
        self.refused_early = EarlyRefusals()  # requests the judge refused, counted per version
        # What a request for a lazy model not loaded is judged by (lazy_judged.py).
        self._judged = JudgedSignatures(
            manager, root, default_max_batch_size, self.refused_early, lambda: self._lazy
        )

    # -- the request path -------------------------------------------------------------------

    def needs_load(self, name: str) -> bool:
        """Note a request for `name` (least-recently-used order); True if it must wait for a load."""
        self.budget.touch(name, self._clock())
        return name in self._lazy and self._dormant(name)

    async def ready(self, name: str, remaining_s: float | None) -> None:
        """Load a lazy model for a request; wait at most `remaining_s` (the load goes on after)."""
        task = self._pending.get(name)
        if task is None:
            task = asyncio.create_task(self._first_load(name), name=f"lazy load {name}")
            self._pending[name] = task
            task.add_done_callback(lambda done: self._load_ended(name, done))
        try:
            await asyncio.wait_for(asyncio.shield(task), remaining_s)
        except asyncio.CancelledError:
            if task.cancelled():  # stop() ended the load, not the caller: answer it (see control.py)
                raise ShuttingDown(f"server is shutting down: model '{name}' was not loaded") from None
            raise
        except asyncio.TimeoutError:  # not the builtin before Python 3.11
            raise ModelLoadTimeout(
                f"model '{name}' is loading (lazy_load) and was not ready within the request's "
                f"deadline ({remaining_s:.3g} s); the load goes on, a later request will find it ready"
            ) from None
        except (RepositoryError, ModelNotFound) as exc:
            raise ModelNotReady(f"model '{name}' (lazy_load) failed to load: {exc}") from None

    async def signatures(self, name: str) -> dict[int, Signature] | None:
        """The signatures of the versions `name`'s next load would serve (JudgedSignatures.get)."""
        return await self._judged.get(name)

    def unnamed_version(self, name: str) -> int | None:
        """The one version `name`'s next load sends every request naming no version to (`routing`);
        None when not known, or not one version."""
        routing = self.routing(name)
        return None if routing is None else routing.only

    def routing(self, name: str) -> UnnamedRouting | None:
        """How `name`'s next load routes a request naming no version (JudgedSignatures.routing)."""
        return self._judged.routing(name)

    def draw(self) -> float:
        """A random routing point from the routing's own source (Rollout.draw)."""
        return self._manager.rollout.draw()

    def _load_ended(self, name: str, task: asyncio.Task[None]) -> None:
        self._pending.pop(name, None)
        if not task.cancelled() and task.exception() is not None:
            log.warning("lazy load of model %s failed: %s", name, task.exception())

    async def _first_load(self, name: str) -> None:
        async with self._changes:
            if not self.needs_load(name):  # loaded meanwhile (RepositoryModelLoad, the poller)
                return
            log.info("model %s: first request, loading it (lazy_load)", name)
            await self._load(name, None)
            self.stats.lazy_loads += 1

    # -- repository changes -----------------------------------------------------------------

    def register_lazy(self, name: str, reason: str = NOT_LOADED, source: ModelSource | None = None) -> None:
        """List a lazy model in the index, not loaded (`source`: as just read, when it was)."""
        if source is not None:
            self._judged.listed(source)
        self._lazy.add(name)
        self._manager.put_entry(ModelEntry(name=name, state=UNAVAILABLE, reason=reason, dormant=True))

    def is_lazy(self, name: str) -> bool:
        return name in self._lazy

    def frame_rules(self, name: str) -> FrameRules | None:
        return self._judged.frame_rules(name)  # for its frames waiting for a load (frame_rules.py)

    async def load(self, name: str, source: ModelSource | None = None, keep_unchanged: bool = False) -> None:
        """(Re)load `name` now, from the repository or `source`, within the budget;
        `keep_unchanged`: its serving versions that did not change stay (ModelManager.load)."""
        async with self._changes:
            await self._load(name, source, keep_unchanged)

    async def unload(self, name: str, *, forget: bool = False) -> None:
        """Unload `name` (draining what it has queued); `forget`: also drop it from the index."""
        async with self._changes:
            await self._manager.unload(name)
            self._measure.forget(name)
            self._lazy.discard(name)  # unloaded on purpose: a request no longer loads it
            self.refused_early.forget(name)  # its statistics go, as its versions'
            if forget:
                self.budget.drop(name)
                self._judged.forget(name)
                self._manager.drop_entry(name)
            else:
                self.budget.forget(name)

    async def stop(self) -> None:
        """Cancel first-request loads still under way (the server is stopping)."""
        pending = list(self._pending.values())
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def lazy_steps(self, config: mc.ModelConfig) -> list[str]:
        """The lazy models an ensemble's steps use (none for a model that is not an ensemble): the
        ensemble is lazy with them, and its first request loads them first."""
        steps = config.ensemble_scheduling.step if is_ensemble(config) else ()
        return sorted({s.model_name for s in steps if s.model_name in self._lazy})

    async def _load(
        self,
        name: str,
        source: ModelSource | None,
        keep_unchanged: bool = False,
        within: frozenset[str] = frozenset(),
    ) -> None:
        """`within`: the ensembles whose loads led here (a cycle of them is refused at their load)."""
        if source is None:
            source = await asyncio.to_thread(self._read, name)
        # Until its load ends, a model and the models its steps use (an ensemble's) are not evicted:
        # the load of an ensemble's second step evicted its first, and the ensemble's load failed.
        steps = source.config.ensemble_scheduling.step if is_ensemble(source.config) else ()
        try:
            with self._guard.hold([name, *(s.model_name for s in steps)]):
                await self._load_held(name, source, keep_unchanged, within)
        except Exception:  # steps loaded for a refused ensemble are idle now: back within the budget
            if steps:  # (they had stayed loaded over it, 2.3 of 2 MiB, until another model's load)
                await self._make_room(name, 0, loaded=True)
            raise

    async def _load_held(
        self, name: str, source: ModelSource, keep_unchanged: bool, within: frozenset[str]
    ) -> None:
        try:
            lazy, pinned = lazy_flags(source.config, source.where)
            by_version, key = await asyncio.to_thread(files_and_key, source)
            files = sum(by_version.values())
        except (ConfigError, OSError) as exc:
            reason = str(exc) if isinstance(exc, ConfigError) else f"{source.directory}: cannot read: {exc}"
            raise self._failed(name, reason, exc) from None
        steps = self.lazy_steps(source.config)
        if steps:  # an ensemble over lazy models: they load first (it failed for want of them)
            lazy, pinned = True, False
            await self._judge_steps(name, source.config, within)
            untried = self._manager.entry(name)
            for step in steps:
                if step not in within and self._manager.entry(step).dormant:
                    log.info("model %s: loading its step model %s first (lazy_load)", name, step)
                    await self._load(step, None, within=within | {name})
                    await self._judge_steps(name, source.config, within)  # by what it measured
            tried = self._manager.entry(name)  # by its steps' loads (EnsembleDependents.load_waiting)
            if tried.state == READY and not keep_unchanged:
                self._lazy.add(name)
                return
            if tried is not untried and tried.state != READY and source.where != OVERRIDE_WHERE:
                # It failed there from this config: a second try had logged the failure twice.
                self.stats.failures += 1
                raise RepositoryError(f"load failed for model '{name}': {tried.reason}")
        held = self.budget.size_of(name)  # None: not loaded now
        measured = self.budget.measured(name, key)
        # An ensemble holds no memory of its own (its steps are counted): counted at 0 and never
        # evicted, where its load's measure (other threads' work) had made it a victim freeing 0.
        ensemble = is_ensemble(source.config)
        need, basis = (0, "") if ensemble else load_need(held, measured, files)
        limit = self.budget.limit_bytes
        if files > limit > 0 and not ensemble:  # no eviction can ever make room, whatever it holds now
            self.stats.refused += 1  # (a reload of such files had been loaded, evicting idle models)
            raise OutgrowsMemoryBudget(refusal(name, files, "its files' size", self.budget))
        # A reload holding no more than now frees nothing by being refused: it evicts what it can.
        reload = held is not None and need <= held
        # A measured need over the whole budget, files within it, is no verdict until every load
        # measured over it (other threads' allocations count too: a 0.45 MiB MLP measured 1.5 once
        # and was refused for good): it loads, evicting all it can, and is measured again.
        remeasure = measured is not None and files <= limit < need and not measured.outgrows(limit)
        if remeasure:
            log.info("model %s measured %.1f MiB, over the budget: loading it to measure again",
                     name, need / MIB)  # fmt: skip
        try:  # an ensemble (0 bytes; its steps judged above) is never refused for room it does not take
            await self._make_room(name, need, best_effort=reload or remeasure or ensemble, basis=basis)
        except MemoryBudgetExceeded as exc:
            # Loading an ensemble's step: it says so, and whether its steps could ever fit together.
            ensembles = sorted(within)
            raise for_ensembles(exc, ensembles, name, need, basis, self._guard.held, self.budget) from None
        await self._one_time_costs.pay_once()
        runs, started = self._runs.mark(), self._clock()
        self._measure.start(name, held)
        try:
            await self._manager.load(name, source, keep_unchanged)
        except Exception:
            self.stats.failures += 1
            raise
        size = self._measure.size(by_version)
        # Other models' runs during it add to its measure: then no verdict (memory_budget.Measured).
        quiet = self._runs.none_since(runs)
        self.budget.remember(name, key, size, quiet)
        holds = 0 if ensemble else self.budget.estimate(name, key)  # one inflated figure is not held
        self.budget.record(name, holds, pinned=pinned, now=self._clock())
        versions = self._manager.entry(name).versions
        self.refused_early.hand_over(name, versions)  # its counts go on growing
        self._hand_over_ensembles(name)
        self._judged.loaded(name, key, versions)  # what it serves is known now
        (self._lazy.add if lazy else self._lazy.discard)(name)
        self.stats.loads += 1
        log.info(
            "model %s loaded in %.2f s: footprint %.1f MiB (files %.1f MiB%s)%s",
            name, self._clock() - started, size / MIB, files / MIB,
            "" if quiet else "; other models ran during it", self.budget.note(),
        )  # fmt: skip
        # Measured bigger than estimated: make room for what it holds now. (With 0 here the check
        # counted only the other models, so it never evicted: 132.7 of 130 MiB stayed used.)
        await self._make_room(name, holds, loaded=True)

    async def _judge_steps(self, name: str, config: mc.ModelConfig, within: frozenset[str]) -> None:
        """Before any step of ensemble `name` loads, and after each step's load (measured bigger than
        its files: it had been let through, and the ensemble refused "needs about 0.0 MiB"), even
        when every step is loaded: refused OUTGROWS_MEMORY_BUDGET when its steps can never fit
        together, RESOURCE_EXHAUSTED when not beside the models never evicted (ensemble_budget.py)."""
        steps = [s for s in step_models(config) if s not in within]
        try:
            await judge_steps(sorted(within | {name}), steps, self.budget, self._root, self._dormant)
        except MemoryBudgetExceeded:  # OUTGROWS, or not beside the models never evicted
            self.stats.refused += 1
            raise

    def _dormant(self, name: str) -> bool:
        try:
            return self._manager.entry(name).dormant
        except ModelNotFound:
            return False

    def _hand_over_ensembles(self, name: str) -> None:
        """The ensembles `name`'s load brought up with it (EnsembleDependents.load_waiting) take
        their early refusals' counts too: they had stayed apart, listed beside the loaded ones."""
        for ensemble in self._guard.ensembles_over(name):
            self.refused_early.hand_over(ensemble, self._manager.entry(ensemble).versions)

    def _read(self, name: str) -> ModelSource:
        try:
            return load_model_source(self._root, name)
        except ModelNotFoundInRepository as exc:
            raise ModelNotFound(str(exc)) from None  # its text names the model already
        except (ConfigError, OSError) as exc:
            raise self._failed(name, str(exc), exc) from None

    def _failed(self, name: str, reason: str, exc: BaseException) -> RepositoryError:
        """A load that failed before the manager saw it (its config or files, `exc`): counted and
        logged like the manager's own failures (a load by RPC had been neither), noted in the index;
        UNAVAILABLE when the server was short of files or memory (errors.load_failure)."""
        self.stats.failures += 1
        log.error("model %s failed to load: %s", name, reason)
        self._manager.note_failed_reload(name, reason)
        return load_failure(reason, exc)

    async def _make_room(
        self, name: str, need: int, *, loaded: bool = False, best_effort: bool = False, basis: str = ""
    ) -> None:
        """Evict for `need` bytes; `loaded` (after its load) or `best_effort` (before a load that
        goes on anyway): as many as it takes, or every idle lazy model, never a refusal. `basis`:
        where `need` came from, for the refusal's message."""
        best_effort = loaded or best_effort
        victims = self.budget.victims(need, self._kept, keep=name, best_effort=best_effort)
        while victims:
            await self._evict(victims[0])
            # Chosen again after each eviction (it awaits): a model chosen idle may be in use now
            # (an ensemble's request began meanwhile), and is kept.
            victims = self.budget.victims(need, self._kept, keep=name, best_effort=best_effort)
        if victims is None:
            self.stats.refused += 1
            why = refusal(name, need, basis, self.budget)
            if need > self.budget.limit_bytes:  # no eviction can ever make room: not to be retried
                raise OutgrowsMemoryBudget(why)
            raise MemoryBudgetExceeded(why)
        if loaded and self.budget.used_bytes > self.budget.limit_bytes > 0:
            # Loaded already, and evicting every idle lazy model was not enough: say so.
            log.warning("model %s: over the memory budget%s", name, self.budget.note())

    def _kept(self, name: str) -> bool:
        """`name` may not be chosen for eviction now: busy (eviction_guard.py), or not loaded (an
        ensemble its step's eviction took down: nothing to free)."""
        if self._guard.busy(name):
            return True
        try:
            return self._manager.entry(name).state != READY
        except ModelNotFound:
            return True

    async def _evict(self, name: str) -> None:
        freed = self.budget.size_of(name) or 0
        # Dormant from now: a request that arrives while it drains waits for its next load. It
        # was marked only after, and 3 in 2,000-4,000 requests failed "not ready (unloaded)". So
        # are the ensembles using it, which go with it (EnsembleDependents.stop_dependent): a
        # request for one began its steps and failed at the evicted one's.
        ensembles = self._guard.ensembles_over(name)
        for model in (name, *ensembles):
            self._manager.entry(model).dormant = True
        await self._manager.unload(name, evicted=True)  # drains as an unload (it was idle when chosen)
        self._measure.forget(name)
        for model in (name, *ensembles):  # the ensembles hold nothing once down: not counted
            self.budget.forget(model)
        self.stats.evictions += 1
        self.register_lazy(name, EVICTED)
        log.info("model %s evicted: %.1f MiB freed%s", name, freed / MIB, self.budget.note())

    # -- observability ----------------------------------------------------------------------

    def gauge_values(self) -> Iterator[Gauge]:
        """Loads, evictions and footprints for /metrics (server/observability/metrics.py)."""
        return load_gauges(self.stats, self.budget)
