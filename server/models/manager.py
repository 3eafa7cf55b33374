"""Loaded models: each version's config, signature, backend instances, batcher and statistics.

The manager owns the lifecycle (load, warm up, serve, reload, unload, stop) and answers every RPC's
first question: which version serves this request, and is it ready? Versions leaving service are
retirement.py's job, the start's phases start_phase.py's, a lazy model's on_demand.py's protocol.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from batcher.budget import ByteBudget
from batcher.run_count import RunCount
from batcher.sequence import SequenceBatcher
from batcher.sequence_types import RETIRED, SequenceId
from server import triton_text
from server.backends.onnxruntime_backend import BackendLoadError
from server.errors import ModelNotFound, ModelNotReady, RepositoryError, load_failure
from server.models.config import ConfigError
from server.models.ensemble_config import is_ensemble, load_rank
from server.models.ensemble_dependents import EnsembleDependents
from server.models.lazy_sequences import SequencesBeforeLoad
from server.models.on_demand import OnDemand
from server.models.repository import (
    ModelNotFoundInRepository,
    ModelSource,
    load_model_source,
    scan_repository,
    version_fingerprint,
)
from server.models.response_cache import ResponseCache
from server.models.retirement import Retirement
from server.models.rollout import Rollout
from server.models.sequence_config import unknown_sequence_hint
from server.models.sequence_routing import EVICTED_SEQUENCE, Routed, SequenceRouting
from server.models.start_phase import StartPhase
from server.models.traffic import parse_policy
from server.models.version_loader import load_ensemble, load_version
from server.models.versions import (
    LOADING,
    READY,
    UNAVAILABLE,
    UNLOADED,
    ModelEntry,
    ModelVersion,
    version_number,
)
from server.observability.sampling import SamplingRegistry
from server.settings import ServerSettings

log = logging.getLogger(__name__)

# (name, ready): SERVING / NOT_SERVING; ready None: the name is forgotten (grpc health's NOT_FOUND).
HealthCallback = Callable[[str, bool | None], None]


class ModelManager:
    def __init__(
        self,
        repository: Path,
        settings: ServerSettings,
        on_health: HealthCallback,
        response_cache: ResponseCache | None = None,
    ) -> None:
        self._root = repository
        self._settings = settings
        self._on_health = on_health
        self._response_cache = response_cache  # shared by every model that enables it
        self._models: dict[str, ModelEntry] = {}
        # The ensembles' step models: an ensemble loads and goes with them (ensemble_dependents.py).
        self._ensembles = EnsembleDependents(self._models, on_health)
        self._lock = asyncio.Lock()  # one repository change at a time
        self.sequence_routing = SequenceRouting()  # where each sequence runs, why retired ones ended
        # Continuations a lazy model not loaded refuses before its load (lazy_sequences.py).
        hint = unknown_sequence_hint(settings)
        self.sequences_before_load = SequencesBeforeLoad(self.sequence_routing, hint)
        # Input bytes queued across every model (each version also has a budget of its own).
        self._queued_bytes = ByteBudget(settings.max_queued_bytes, "max_queued_bytes")
        self.runs = RunCount()  # every version's runs: a load's footprint is a verdict if none ran (lazy.py)
        # A load's versions are up (kept, all), the replaced not yet retired: lazy.py measures (LoadMeasure).
        self.on_loaded: Callable[[list[int], list[int]], None] = lambda kept, versions: None
        self.sampling = SamplingRegistry(settings)  # sampled requests' files and drift monitors
        # Replaced or unloaded versions leave service: cache, sampling, sequences, drain (retirement.py).
        self._retirement = Retirement(
            settings.shutdown_grace_s, response_cache, self.sampling, self.sequence_routing
        )
        self.on_demand: OnDemand | None = None  # set by the app when lazy models may exist
        self.rollout = Rollout()  # traffic policies, shadow and rollback (server/models/rollout.py)
        self._start = StartPhase()  # reading the repository, then its load (start_phase.py)

    # -- routing ---------------------------------------------------------------------------

    def resolve(self, name: str, version: str = "", routed: Routed | None = None) -> ModelVersion:
        """The version serving a request; NOT_FOUND or UNAVAILABLE errors name what is missing.
        `routed`: an inference request, routed by the model's traffic policy when it names no version
        (a sequence's start is noted, its continuations follow it: sequence_routing.py)."""
        entry = self._models.get(name)
        if entry is None:
            if self._start.listing:
                why = "the server is starting (reading its repository)"
                raise ModelNotReady(f"model '{name}' is not ready: {why}")
            raise ModelNotFound(triton_text.unknown_model(name))
        if entry.state != READY:
            raise ModelNotReady(f"model '{name}' is not ready ({entry.state.lower()}: {entry.reason})")
        if not version:
            if routed is not None:  # a sequence's continuation goes where it started
                return entry.versions[self.sequence_routing.route(entry, routed, self.rollout.route)]
            return entry.versions[entry.order[0]]
        served = entry.versions.get(version_number(version))
        if served is None:
            raise ModelNotFound(triton_text.unknown_version(name, version, entry.order))
        if routed is not None:
            self.sequence_routing.note(entry, routed, served.version)
        return served

    def note_named(self, served: ModelVersion, routed: Routed) -> None:
        """`routed` names `served`'s version, resolved before without it (a stream's request): a
        sequence's start is noted as `resolve` notes it, so unversioned continuations follow it."""
        entry = self._models.get(served.name)
        if entry is not None and entry.versions.get(served.version) is served:
            self.sequence_routing.note(entry, routed, served.version)

    def ensemble_steps(self, name: str) -> frozenset[str]:
        """The models `name`'s steps use (none when it is no ensemble)."""
        return self._ensembles.steps(name)

    def note_ensemble(self, source: ModelSource) -> None:
        """Ensemble `source` was refused before its load: it loads again once a step model loads."""
        self._ensembles.note(source)

    def ensembles_using(self, model: str) -> list[str]:
        """The loaded ensembles whose steps use `model`."""
        return self._ensembles.using(model)

    def _discard_cached(self, name: str) -> None:
        """Forget the cached answers of `name` and of every ensemble above it: an ensemble's were
        computed by the step versions now replaced or gone (an ensemble with response_cache kept
        answering a reloaded step's old outputs)."""
        for model in (name, *self._ensembles.above(name)):
            self._retirement.discard_cached(model)

    def entry(self, name: str) -> ModelEntry:
        entry = self._models.get(name)
        if entry is None:
            raise ModelNotFound(triton_text.unknown_model(name))
        return entry

    def release_sequences(self, seen: Iterable[tuple[str, str, SequenceId]]) -> None:
        """Release the sequences a stream drove (its (model, version, sequence id)s): it ended.
        `seen` is the stream's own record, the owner its requests carried: only the sequences whose
        latest start it sent are released (batcher/sequence.py)."""
        for name, version, sid in seen:
            for sequences in self._holding_sequences(name, version, set()):
                sequences.release(sid, "it was released when the stream that started it ended", seen)

    def _holding_sequences(self, name: str, version: str, seen: set[str]) -> list[SequenceBatcher]:
        """The sequences of the versions a request naming (`name`, `version`) may have started one
        in: its own, or an ensemble's sequence steps', however nested (their starts carry its sender)."""
        found: list[SequenceBatcher] = []
        for served in self._versions_named(name, version):
            if served.sequences is not None:
                found.append(served.sequences)
            elif served.ensemble is not None:
                for step in self._ensembles.steps(name) - seen:
                    found += self._holding_sequences(step, "", seen | {name})
        return found

    def _versions_named(self, name: str, version: str) -> list[ModelVersion]:
        """The versions a request naming (`name`, `version`) may have reached: with no version,
        every serving one (a traffic split sends a sequence to any; the newest alone missed those
        routed elsewhere). None at all when the model is gone or not ready: its sequences went with it."""
        if version:
            try:
                return [self.resolve(name, version)]
            except Exception:
                return []
        entry = self._models.get(name)
        return list(entry.versions.values()) if entry is not None and entry.state == READY else []

    def entries(self) -> Iterable[ModelEntry]:
        return list(self._models.values())

    @property
    def all_ready(self) -> bool:
        """ServerReady: the start-up load has ended and every model is ready, or not loaded on
        purpose (a model that failed to load keeps it false)."""
        return not self._start.loading and all(e.ready_or_by_design for e in self._models.values())

    def reading_repository(self) -> None:
        """The server answers before it has read its repository (SluicewayServer.start)."""
        self._start.reading()

    def start_listed(self) -> None:
        """Every model of the repository is in the index (loading, lazy, failed, not chosen)."""
        self._start.listed_all()

    def start_load_ended(self) -> None:
        """The models the start loads have loaded (or failed): ServerReady may now be true."""
        self._start.load_ended()

    async def listed(self) -> None:
        """Returns once the repository is listed (StartPhase.wait_listed)."""
        await self._start.wait_listed()

    def ready_versions(self) -> Iterable[ModelVersion]:
        for entry in self._models.values():
            if entry.state == READY:
                yield from entry.versions.values()

    # -- lifecycle -------------------------------------------------------------------------

    async def load_all(self) -> None:
        """Load every model in the repository; a model that fails is marked UNAVAILABLE."""
        async with self._lock:
            sources, errors = await asyncio.to_thread(scan_repository, self._root)
            for name, reason in errors.items():
                log.error("model %s not loaded: %s", name, reason)
                self._models[name] = ModelEntry(name=name, state=UNAVAILABLE, reason=reason)
                self._on_health(name, False)
            # An ensemble after the models its steps use (models/ensemble_config.py).
            rank = load_rank({name: source.config for name, source in sources.items()})
            for name in sorted(sources, key=rank):
                await self._load_source(sources[name])

    async def load(self, name: str, source: ModelSource | None = None, keep_unchanged: bool = False) -> None:
        """(Re)load one model from the repository (or `source`, a RepositoryModelLoad override);
        the old versions serve until the new are ready. `keep_unchanged`: see _load_source."""
        async with self._lock:
            try:
                if source is None:
                    source = await asyncio.to_thread(load_model_source, self._root, name)
            except ModelNotFoundInRepository as exc:
                raise ModelNotFound(str(exc)) from None  # its text names the model already
            except (ConfigError, OSError) as exc:
                self.note_failed_reload(name, str(exc))
                raise load_failure(str(exc), exc) from None
            old = self._models.get(name)
            if old is None or old.state != READY:  # nothing serves meanwhile: say LOADING, as Triton
                dormant = old is not None and old.dormant  # a lazy model's requests wait for it
                self._models[name] = ModelEntry(
                    name, state=LOADING, reason="a load is under way", dormant=dormant
                )
            entry = await self._load_source(source, keep_unchanged, raise_failure=True)
            if entry.state != READY:
                raise RepositoryError(f"load failed for model '{name}': {entry.reason}")  # Triton's words
            # Ensembles pinned to a version this load no longer serves stop, then load again at once
            # with those waiting for it: one whose config fits now (re-pinned before the version
            # came) serves again, one that does not shows its load's error, as a restart would.
            await self._ensembles.stop_unserved(name, self._retirement.retire)
            await self._ensembles.load_waiting(name, self._load_ensemble_again)

    async def _load_ensemble_again(self, name: str) -> bool:
        """A waiting ensemble's load, now that a step model is ready (EnsembleDependents): READY?
        From what a RepositoryModelLoad gave it last, or else the repository as it is now."""
        source = self._ensembles.given(name)
        try:
            if source is None:
                source = await asyncio.to_thread(load_model_source, self._root, name)
        except (ModelNotFoundInRepository, ConfigError, OSError):
            return False  # gone or broken meanwhile: its entry keeps the reason it had
        return (await self._load_source(source)).state == READY

    async def unload(self, name: str, *, evicted: bool = False) -> None:
        """Unload `name`; `evicted`: by the memory budget, so its rollout state waits for its
        next load (Rollout.hold), where an unload forgets it."""
        async with self._lock:
            entry = self.entry(name)
            entry.state, entry.reason = UNAVAILABLE, UNLOADED
            self._on_health(name, False)
            self._discard_cached(name)
            # Its live sequences' continuations are told why they ended (an eviction had read
            # "unloaded or replaced", as an operator's unload).
            await self._retirement.retire(
                entry.versions.values(), why=EVICTED_SEQUENCE if evicted else RETIRED
            )
            entry.versions.clear()
            entry.order.clear()
            self.sequence_routing.forget(name)
            await self._ensembles.stop_dependent(name, evicted, self._retirement.retire)
            if evicted:
                self.rollout.hold(name)
            else:
                self.rollout.forget(name)

    async def stop(self, drain_timeout_s: float) -> None:
        """Stop every batcher: finish what is queued within the timeout, fail the rest."""
        self._start.stopping()  # an index waiting for the start-up listing is answered now
        versions = [v for e in self._models.values() for v in e.versions.values()]
        for entry in self._models.values():
            self._on_health(entry.name, False)
        await asyncio.gather(*(v.batcher.stop(drain=True, timeout_s=drain_timeout_s) for v in versions))
        for version in versions:
            for backend in version.backends:
                # Abandoned, not closed: a run still going past the grace is told to end (its
                # requests were failed already); the process had waited for it to exit.
                backend.abandon()
        await asyncio.to_thread(self.sampling.close, drain_timeout_s)  # writes what was sampled

    async def _load_source(
        self, source: ModelSource, keep_unchanged: bool = False, *, raise_failure: bool = False
    ) -> ModelEntry:
        """Load `source`'s versions and make them the model's. `keep_unchanged` (the poller): a
        serving version whose fingerprint is the same is kept as it is, with its statistics,
        sequences and instances, rather than loaded again (one version added reloaded them all).
        `raise_failure`: a failed first load raises RepositoryError caused by the failure (the
        poller tries again a load the OS failed: load_retry.py), once the index shows it."""
        old = self._models.get(source.name)
        serving = old.versions if old is not None and old.state == READY and keep_unchanged else {}
        self._ensembles.note(source)
        versions: dict[int, ModelVersion] = {}
        try:
            try:
                # The traffic policy against the versions this load serves, before any loads: a poll
                # reload that only dropped a version loaded none, so a policy naming it was never
                # checked, and every routed request failed INTERNAL.
                parse_policy(source.config, source.where, source.versions)
                self._ensembles.refuse_cycle(source)  # under the lock: loads in turn
                for number, path in sorted(source.versions.items(), reverse=True):
                    kept = serving.get(number)
                    if is_ensemble(source.config):
                        shared = (self.resolve, self._response_cache, self._settings.max_queue_size)
                        versions[number] = await load_ensemble(source, number, kept, *shared)
                        continue
                    if kept is not None and kept.fingerprint == await asyncio.to_thread(
                        version_fingerprint, source, number
                    ):
                        versions[number] = kept
                        continue
                    versions[number] = await self._load_version(source, number, path)
            except BaseException:
                # The versions started before the one that failed go too: a failed reload kept
                # their sessions, batchers and threads for ever (63 MiB a try on resnet).
                await self._retirement.retire(v for n, v in versions.items() if serving.get(n) is not v)
                raise
        except Exception as exc:  # one bad model never stops the others
            known = (ConfigError, RepositoryError, BackendLoadError, OSError)
            reason = str(exc) if isinstance(exc, known) else repr(exc)
            if isinstance(exc, known):  # the reason says it all: one line, no traceback
                log.error("model %s failed to load: %s", source.name, reason)
            else:
                log.exception("model %s failed to load", source.name)
            if old is not None and old.state == READY:
                # A failed reload keeps the versions that were serving; the index says why.
                self.note_failed_reload(source.name, reason)
                said = f"load failed for model '{source.name}' (a reload; the versions serving stay)"
                raise load_failure(f"{said}: {reason}", exc) from None
            entry = ModelEntry(name=source.name, state=UNAVAILABLE, reason=reason)
            self._models[source.name] = entry
            self._on_health(source.name, False)
            if raise_failure:
                raise load_failure(f"load failed for model '{source.name}': {reason}", exc) from exc
            return entry
        entry = ModelEntry(
            name=source.name, versions=versions, state=READY, order=sorted(versions, reverse=True)
        )
        self._models[source.name] = entry
        for version in versions.values():
            self.sequence_routing.follow(version)  # its ended sequences' notes go
        self._discard_cached(source.name)  # outputs of the versions just replaced
        self._on_health(source.name, True)
        same = [n for n in entry.order if serving.get(n) is versions[n]]
        kept_note = f"; unchanged, kept serving: {', '.join(map(str, same))}" if same else ""
        log.info("model %s ready (versions %s%s)", source.name, ", ".join(map(str, entry.order)), kept_note)
        replaced = [] if old is None else [v for n, v in old.versions.items() if versions.get(n) is not v]
        self.on_loaded(same, entry.order)
        self._retirement.begin(replaced)  # retire repeats it: idempotent
        # Before the drain: continuations of the sequences the replaced (or earlier unloaded)
        # versions ended reach the new ones meanwhile, and are told so, not "never started".
        self.sequence_routing.hand_over(source.name, versions.values())
        await self._retirement.retire(replaced, handover=True)
        return entry

    async def _load_version(self, source: ModelSource, number: int, path: Path) -> ModelVersion:
        shared = (self._response_cache, self.sampling, self._queued_bytes, self.runs)  # by every version
        return await load_version(source, number, path, self._settings, *shared)

    def note_failed_reload(self, name: str, reason: str) -> None:
        """A serving model's reload failed: it keeps serving, and its index reason says why."""
        entry = self._models.get(name)
        if entry is not None and entry.state == READY:
            served = ", ".join(map(str, entry.order))
            entry.reason = f"reload failed, version(s) {served} still serving: {reason}"

    def put_entry(self, entry: ModelEntry) -> None:
        """Show a model that is not loaded (lazy, not chosen, unreadable) in the index."""
        self._models[entry.name] = entry
        self._on_health(entry.name, False)

    def drop_entry(self, name: str) -> None:
        """Forget a model that is not loaded, nor being loaded (its directory left the repository,
        or it never had one: a name sent only with `file:` uploads)."""
        entry = self._models.get(name)
        if entry is not None and not entry.versions and entry.state != LOADING:
            del self._models[name]
            self._on_health(name, None)  # its health record too: NOT_SERVING had stayed for good
            self.sampling.forget(name)  # and its sample counters (kept across its loads till now)
