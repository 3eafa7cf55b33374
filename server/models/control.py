"""Triton's model control modes: what is loaded at start, which RPCs may load, what polling sees.

- none: every model loads at start; RepositoryModelLoad/Unload are refused (Triton's words).
- explicit: only `--load-model` models load at start ("*": all); the RPCs load and unload, each
  load or unload run to its end though its caller leaves (rpc_operations.py).
- poll: as none at start, then the repository is watched (watchfiles: file events, grouped until
  nothing changed for repository_poll_secs) and each changed model is reloaded, a new one loaded,
  a removed one unloaded. A broken change keeps the serving versions; the index reason says why.
  A load the OS failed (too many open files, no memory) is tried again later (load_retry.py).

Lazy models (server/models/lazy.py) are listed, not loaded, in every mode.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from pathlib import Path

from protos import grpc_service_pb2 as pb
from protos import model_config_pb2 as mc
from server.errors import (
    MemoryBudgetExceeded,
    ModelControlDisabled,
    ModelNotFound,
    OutgrowsMemoryBudget,
    RepositoryError,
    load_failure,
)
from server.models.config import ConfigError
from server.models.ensemble_config import cycle_refusal, cycle_refusals, is_ensemble, load_rank, steps_of
from server.models.lazy import ModelLoads
from server.models.lazy_flags import lazy_flags
from server.models.load_request import parse_load_parameters, remove_dead_uploads, write_model_directory
from server.models.load_retry import LoadRetries, os_failure
from server.models.manager import ModelManager
from server.models.repository import (
    ModelNotFoundInRepository,
    ModelSource,
    load_model_source,
    scan_repository,
)
from server.models.repository_watch import RepositoryWatch
from server.models.rpc_operations import RpcOperations
from server.models.versions import LOADING, READY, UNAVAILABLE, ModelEntry
from server.settings import ServerSettings

log = logging.getLogger(__name__)

# Triton's message (and code, UNAVAILABLE) for load/unload RPCs in modes none and poll.
NOT_ALLOWED = "explicit model load / unload is not allowed if polling is enabled"
NOT_CHOSEN = "not loaded (model control mode explicit: load it with RepositoryModelLoad)"
START_LOAD = "waiting for its turn in the start-up load"


class RepositoryControl:
    def __init__(
        self, root: Path, settings: ServerSettings, manager: ModelManager, loads: ModelLoads
    ) -> None:
        self._root = root
        self._settings = settings
        self._mode = settings.model_control_mode
        self._manager = manager
        self._loads = loads
        self._uploads: dict[str, Path] = {}  # model -> directory of files sent with its load
        self._stop = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._operations = RpcOperations(self._stop)  # loads and unloads by RPC, run to their end
        self._retries = LoadRetries(settings.repository_poll_secs)  # poll mode: loads the OS failed
        self._no_room: set[str] = set()  # of those, the budget's refusals: tried once room is made

    async def start(self) -> None:
        """Load what the mode loads at start; in poll mode, start watching the repository."""
        if self._mode == "explicit":  # the only mode that takes uploads
            stale = await asyncio.to_thread(remove_dead_uploads, self._settings.cache_dir / "uploads")
            if stale:
                log.info("removed %d upload directories of servers that are gone", len(stale))
        sources, errors = await asyncio.to_thread(scan_repository, self._root)
        in_cycles = cycle_refusals({name: found.config for name, found in sources.items()})
        cycled = {name: sources.pop(name) for name in in_cycles}
        errors.update(in_cycles)
        explicit = self._mode == "explicit" and "*" not in self._settings.load_model
        chosen = set(self._settings.load_model) if explicit else set(sources) | set(errors)
        for name, reason in errors.items():
            # ERROR for a model this start loads; one explicit mode was not asked for is only a note
            # (Triton does not read it at all): its load by RPC would report the reason then.
            level = logging.ERROR if name in chosen else logging.INFO
            log.log(level, "model %s not loaded: %s", name, reason)
            if name in chosen:
                self._loads.stats.failures += 1  # a config that cannot be read is a failed load
                if name in cycled:  # it loads again once a step model loads (the cycle fixed)
                    self._manager.note_ensemble(cycled[name])
            # One explicit mode was not asked to load does not make the server unready, broken or not.
            entry = ModelEntry(name=name, state=UNAVAILABLE, reason=reason, dormant=name not in chosen)
            self._manager.put_entry(entry)
        if explicit:  # an ensemble named brings its step models, as Triton's --load-model does
            chosen |= steps_of(chosen, {name: source.config for name, source in sources.items()})
            for name in sorted(chosen - set(sources) - set(errors)):
                log.error("--load-model %s: no such model in %s", name, self._root)
                reason = f"--load-model names '{name}', which is not in the repository"
                self._manager.put_entry(ModelEntry(name=name, state=UNAVAILABLE, reason=reason))
        # An ensemble after the models its steps use (models/ensemble_config.py).
        rank = load_rank({name: source.config for name, source in sources.items()})
        order = sorted(sources, key=rank)
        lazy = self._list_at_start(order, sources, chosen)
        self._manager.start_listed()
        for name in order:
            if name in chosen and name not in lazy:
                failure = await self._apply_source(sources[name])
                if self._mode == "poll":
                    self._retry_if_os(name, failure)
        if self._mode == "poll":
            watching = asyncio.Event()
            self._watcher = asyncio.create_task(self._watch(watching), name="repository poller")
            # Ready only once the watches exist: a change made right after start() must be seen.
            await watching.wait()

    def _list_at_start(self, order: list[str], sources: dict[str, ModelSource], chosen: set[str]) -> set[str]:
        """List every model of the repository before the first load begins, in load order: those
        this start loads as LOADING (their requests UNAVAILABLE, retryable: a model not yet reached
        had answered NOT_FOUND, which no client retries), lazy ones and those explicit mode was
        not asked for as not loaded. Returns the lazy ones (listed, not loaded)."""
        lazy: set[str] = set()
        for name in order:
            if name not in chosen:
                entry = ModelEntry(name=name, state=UNAVAILABLE, reason=NOT_CHOSEN, dormant=True)
                self._manager.put_entry(entry)
            elif self._lazy_at_start(sources[name]):
                # Its config as read: latest-frame-wins for frames waiting for its first load.
                self._loads.register_lazy(name, source=sources[name])  # ensembles over lazy steps after them
                lazy.add(name)
            else:
                self._manager.put_entry(ModelEntry(name=name, state=LOADING, reason=START_LOAD))
        return lazy

    def _lazy_at_start(self, source: ModelSource) -> bool:
        """`lazy_load`, or an ensemble over lazy models (as _apply_source decides)."""
        try:
            lazy, _ = lazy_flags(source.config, source.where)
        except ConfigError:
            return False  # its load fails and says why (_apply_source)
        return lazy or bool(self._loads.lazy_steps(source.config))

    async def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            await self._watcher
        await self._operations.cancel()  # loads and unloads by RPC whose callers left
        await self._loads.stop()

    def cleanup(self) -> None:
        """Remove the directories of files sent with loads (after the models stopped)."""
        for upload in self._uploads.values():
            shutil.rmtree(upload, ignore_errors=True)
        self._uploads.clear()

    # -- RepositoryModelLoad / RepositoryModelUnload --------------------------------------------

    async def load_rpc(self, name: str, parameters: dict[str, pb.ModelRepositoryParameter]) -> None:
        self._check_allowed()
        await self._operations.run(self._load(name, parameters), f"load of model {name}")

    async def unload_rpc(self, name: str, dependents: bool = False) -> None:
        """`dependents` (Triton's unload_dependents): an ensemble's step models go too, nested
        ones' as well, except those another loaded ensemble still uses."""
        self._check_allowed()
        await self._operations.run(self._unload_with(name, dependents), f"unload of model {name}")

    async def _unload_with(self, name: str, dependents: bool) -> None:
        steps = self._manager.ensemble_steps(name) if dependents else frozenset()
        await self._unload(name)
        for step in sorted(steps):
            entry = self._entry(step)
            if entry is None or self._manager.ensembles_using(step):
                continue
            # A nested ensemble waiting for its own steps goes too, with them: passed over, it had
            # come back by itself once they served again, unlike one READY at the unload (a
            # tester, session 53).
            waiting = entry.failed_or_waiting and bool(self._manager.ensemble_steps(step))
            if entry.state == READY or waiting:
                await self._unload_with(step, dependents)

    async def _load(self, name: str, parameters: dict[str, pb.ModelRepositoryParameter]) -> None:
        override = parse_load_parameters(name, parameters)
        upload: Path | None = None
        if override.files:
            upload = await asyncio.to_thread(
                write_model_directory, self._settings.cache_dir / "uploads", name, override.files
            )
        try:
            source = None
            if not override.empty:
                source = await asyncio.to_thread(self._read, upload or self._root, name, override.config)
            try:
                named = source or await asyncio.to_thread(self._read, self._root, name, None)
            except (ModelNotFound, RepositoryError):
                named = None  # the load below says why, counted and logged as a failed load
            if named is not None:
                await self._load_steps(named)
            # Versions whose files and config did not change keep serving (instances, statistics,
            # sequences), as Triton's load does since 24.08 and our poller did: it had reloaded all.
            await self._loads.load(name, source, keep_unchanged=True)
        except BaseException:
            if upload is not None:
                shutil.rmtree(upload, ignore_errors=True)
                self._forget_outside_repository(name)  # the answer says why; the index never will
            raise
        self._replace_upload(name, upload)

    async def _load_steps(self, source: ModelSource) -> None:
        """An ensemble's step models that are not ready load first, nested ones too, in the
        start's order (load_rank), as Triton's explicit mode does: the ensemble's load had failed
        "model 'pre' is not ready"."""
        if not is_ensemble(source.config):
            return
        sources, _ = await asyncio.to_thread(scan_repository, self._root)
        configs = {name: found.config for name, found in sources.items()}
        cycle = self._refused_for_cycle(source, configs)
        if cycle is not None:
            raise RepositoryError(cycle)
        steps = steps_of({source.name}, {**configs, source.name: source.config}) & set(sources)
        for model in sorted(steps, key=load_rank(configs)):
            entry = self._entry(model)
            if entry is None or entry.state != READY:
                await self._loads.load(model, sources[model])

    async def _unload(self, name: str) -> None:
        if self._entry(name) is None:
            return  # as Triton: unloading a model it does not know changes nothing, and answers OK
        # A name with no directory (uploads only) is forgotten whole: its lazy signatures and
        # measured footprint had been kept by name for good, ~3 kB a distinct name (a tester:
        # 1,500 upload-and-unload cycles, +4.5 MB).
        await self._loads.unload(name, forget=not (self._root / name).is_dir())
        self._replace_upload(name, None)
        self._forget_outside_repository(name)

    def _forget_outside_repository(self, name: str) -> None:
        """A name with no directory in the repository (sent only with `file:` uploads, or given to
        --load-model but not there) leaves the index once it is not loaded, as Triton's index lists
        the repository's directories: each such name had stayed in it for good."""
        if not (self._root / name).is_dir():
            self._manager.drop_entry(name)

    def _check_allowed(self) -> None:
        if self._mode != "explicit":
            raise ModelControlDisabled(
                f"{NOT_ALLOWED} (model control mode '{self._mode}'; start the server with "
                "--model-control-mode explicit to load and unload models by RPC)"
            )

    def _replace_upload(self, name: str, upload: Path | None) -> None:
        old = self._uploads.pop(name, None)
        if upload is not None:
            self._uploads[name] = upload
        if old is not None:  # the sessions that read these files were retired
            shutil.rmtree(old, ignore_errors=True)

    @staticmethod
    def _read(root: Path, name: str, config: mc.ModelConfig | None) -> ModelSource:
        try:
            return load_model_source(root, name, config)
        except ModelNotFoundInRepository as exc:
            raise ModelNotFound(str(exc)) from None  # its text names the model already
        except (ConfigError, OSError) as exc:
            raise load_failure(str(exc), exc) from None

    # -- loading a model as its config asks ---------------------------------------------------------

    async def _apply_source(
        self, source: ModelSource, keep_unchanged: bool = False, why: str = ""
    ) -> Exception | None:
        """Load `source`, or list it as lazy; a failure is logged, shown in the index and returned.
        `keep_unchanged` (the poller): versions that did not change keep serving, as Triton's do;
        `why` (the poller's): what led here, logged with what is done about it."""
        try:
            lazy, _ = lazy_flags(source.config, source.where)
        except ConfigError as exc:
            self._failed(source.name, str(exc))
            return exc
        entry = self._entry(source.name)
        # An ensemble over lazy models is lazy with them: it failed to load at start (its steps
        # were not loaded), and its requests never loaded them.
        lazy = lazy or bool(self._loads.lazy_steps(source.config))
        if lazy and (entry is None or entry.dormant):
            if why:  # it had said "loading it", and loaded nothing
                log.info("model %s %s; not loaded now (lazy_load): listed, its next request loads it",
                         source.name, why)  # fmt: skip
            self._loads.register_lazy(source.name, source=source)
            return None
        if why:
            log.info("model %s %s; loading it", source.name, why)
        try:
            await self._loads.load(source.name, source, keep_unchanged)
        except MemoryBudgetExceeded as exc:  # refused before the manager saw it: show why
            self._failed(source.name, str(exc), counted=False)  # counted as a refusal
            return exc
        except Exception as exc:  # one bad model never stops the others
            # The manager logged its own failure (a second line here doubled every alert on it).
            if self._entry(source.name) is None:  # it failed before the manager saw it: say why
                self._failed(source.name, str(exc))
            return exc
        return None

    def _failed(self, name: str, reason: str, *, counted: bool = True) -> None:
        """A load (at start or by the poller) that failed before the manager saw it: noted in the
        index, logged, and counted in sluiceway_model_load_failures_total (it was not: alerts on
        it missed the commonest mistake, a broken config.pbtxt)."""
        if counted:
            self._loads.stats.failures += 1
        entry = self._entry(name)
        if entry is not None and entry.versions:
            self._manager.note_failed_reload(name, reason)
            log.error("model %s: change not applied, the loaded versions keep serving: %s", name, reason)
        else:
            self._manager.put_entry(ModelEntry(name=name, state=UNAVAILABLE, reason=reason))
            log.error("model %s not loaded: %s", name, reason)

    def _refused_for_cycle(self, source: ModelSource, configs: dict[str, mc.ModelConfig]) -> str | None:
        """The refusal of ensemble `source` when it is in a cycle with the repository's `configs`
        (None: it is not). Refused, its steps are noted, so that it loads again once one of them
        loads (the cycle fixed), as an ensemble waiting on a step does: it had stayed refused, "in
        a cycle", until its own files changed."""
        reason = cycle_refusal(source.name, {**configs, source.name: source.config})
        if reason is not None:
            self._manager.note_ensemble(source)
            self._failed(source.name, reason)
        return reason

    def _entry(self, name: str) -> ModelEntry | None:
        try:
            return self._manager.entry(name)
        except ModelNotFound:
            return None

    # -- poll mode ------------------------------------------------------------------------------------

    async def _watch(self, watching: asyncio.Event) -> None:
        quiet_s = self._settings.repository_poll_secs
        log.info("watching %s for model changes (grouped over %d ms)", self._root, int(quiet_s * 1000))
        known = lambda: [entry.name for entry in self._manager.entries()]  # noqa: E731
        watch = RepositoryWatch(
            self._root, quiet_s, self._stop, self._apply_changes, known, self._retries.due
        )
        await watch.run(watching)

    async def _apply_changes(self, names: set[str]) -> None:
        for name in sorted(names):
            if self._stop.is_set():
                return
            try:
                await self._refresh(name)
            except Exception:  # the poller must outlive any one model's trouble
                log.exception("model %s: applying a repository change failed", name)

    async def _refresh(self, name: str) -> None:
        directory = self._root / name
        if not directory.is_dir():
            self._retries.forget(name)
            if self._entry(name) is not None:
                log.info("model %s: its directory was removed; unloading it", name)
                await self._loads.unload(name, forget=True)
                self._retries.hurry(self._no_room)  # its room may be theirs
            return
        try:
            source = await asyncio.to_thread(load_model_source, self._root, name)
        except (ConfigError, ModelNotFoundInRepository, OSError) as exc:
            self._failed(name, str(exc))
            self._retry_if_os(name, exc)
            return
        if is_ensemble(source.config):  # a cycle of ensembles: each would wait on the other's load
            sources, _ = await asyncio.to_thread(scan_repository, self._root)
            if self._refused_for_cycle(source, {n: found.config for n, found in sources.items()}):
                return
        failures = self._retries.failures(name)
        why = f"failed to load {failures} time(s) for now" if failures else "changed on disk"
        self._retry_if_os(name, await self._apply_source(source, keep_unchanged=True, why=why))

    def _retry_if_os(self, name: str, failure: Exception | None) -> None:
        """Poll mode: a load the OS failed (EMFILE, ENOMEM, ...) or the memory budget had no room
        for now is tried again later, its index reason saying when; it had stayed UNAVAILABLE
        until its files changed (a budget's refusals even after other models left). Any other
        outcome ends the retries: a broken file waits for the next change, as before."""
        no_room = isinstance(failure, MemoryBudgetExceeded) and not isinstance(failure, OutgrowsMemoryBudget)
        (self._no_room.add if no_room else self._no_room.discard)(name)
        if failure is None or not (no_room or os_failure(failure)):
            self._retries.forget(name)
            return
        retry = self._retries.failed(name, time.monotonic())
        entry = self._entry(name)
        cause = "no room in the memory budget now" if no_room else "an OS error"
        if entry is not None:
            entry.reason = f"{entry.reason} {retry.note(cause)}"
        log.warning("model %s: the load failed (%s); trying again in %.3g s", name, cause, retry.delay_s)
