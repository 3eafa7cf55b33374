"""The backend instances of one model version: how to make one, and how the watchdog replaces one.

An instance is an OrtBackend (or, for `backend: "identity"`, an IdentityBackend) with its own
executor, wrapped in a FaultBackend when the model's config injects faults. The manager makes a
version's instances here, and hands the batcher `replacer(...)`: after a run outlived the
watchdog's limit, the stuck instance is abandoned (onnxruntime is asked to end its runs, its
executor takes no more) and a fresh one, with a new session and a new executor, takes its place,
in the manager's list too (so stopping closes it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from batcher.types import Backend, Tensors
from batcher.watchdog import ReplaceBackend
from protos import model_config_pb2 as mc
from server.backends.batch_axes import with_batch_axes
from server.backends.fault_backend import (
    LOAD_ERROR,
    REPLACE_GATE,
    FaultBackend,
    FaultSpec,
    Session,
    wait_at_gate,
)
from server.backends.hosted_backend import HostedBackend, Unhostable
from server.backends.hosted_session import OpenRequest
from server.backends.identity_backend import IdentityBackend, IdentitySpec, OffLoop, identity_plan
from server.backends.instance_groups import InstancePlan, plan_instances
from server.backends.io_binding import CUDA_PROVIDERS
from server.backends.onnxruntime_backend import (
    BackendLoadError,
    OrtBackend,
    OrtOptions,
    Provider,
    ort_options_for,
)
from server.backends.prepared_graph import PreparedGraph
from server.backends.tensorrt_options import engine_cache_dir
from server.models.config import IDENTITY, RUN_TIMEOUT, ConfigError, dynamic_batching_enabled
from server.models.config_tensors import ReshapePlan
from server.models.tensorrt_paths import check_tensorrt_paths
from server.settings import ServerSettings

log = logging.getLogger(__name__)


class ModelInstance(Protocol):
    """What the server does with an instance, whichever kind it is."""

    async def run(self, inputs: Tensors) -> Tensors: ...

    def close(self) -> None: ...

    def abandon(self) -> None: ...


def run_timeout_for(config: mc.ModelConfig, source: str, default_s: float) -> float:
    """The watchdog's limit for a model: its `run_timeout_s` parameter, else the server's."""
    if RUN_TIMEOUT not in config.parameters:
        return default_s
    value = config.parameters[RUN_TIMEOUT].string_value.strip()
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not (seconds >= 0 and math.isfinite(seconds)):
        raise ConfigError(
            f"{source}: parameters '{RUN_TIMEOUT}' must be seconds >= 0 (0: no limit), got '{value}'"
        )
    return seconds


@dataclass(frozen=True)
class SharedSessions:
    """Under `--shared-sessions` (session_host.py): the host's socket, which instances it holds
    (every one, or those on a GPU), and the rows one merged run may hold (0: none merged)."""

    socket: Path
    every: bool
    max_rows: int
    options: OrtOptions  # the host's sessions': intra_op_threads as given, not a worker's share
    fingerprint: str  # the version's load (hosted_session.OpenRequest)

    def holds(self, providers: Sequence[Provider]) -> bool:
        return self.every or (bool(providers) and providers[0][0] in CUDA_PROVIDERS)


class InstanceFactory:
    """Makes the instances of one model version; `session` blocks (call it off the event loop)."""

    def __init__(
        self,
        path: Path,
        options: OrtOptions,
        providers: Sequence[Provider],
        *,
        name: str,
        workers: int,
        faults: FaultSpec | None,
        batch_axes: Mapping[str, int] | None = None,
        reshape: ReshapePlan | None = None,
        identity: IdentitySpec | None = None,
        max_batch_size: int = 0,
        planned: int = 0,  # instances the load makes: its first's prepared graph serves the rest
        shared: SharedSessions | None = None,  # sessions in the session host (session_host.py)
    ) -> None:
        self._shared = shared
        self._path = path
        self._planned = planned
        # The load's prepared graph by providers (prepared_graph.py), until its last instance.
        self._prepared: dict[tuple[str, ...], PreparedGraph] = {}
        self._batch_axes = dict(batch_axes or {})  # tensors batched on another axis (batch_axes.py)
        self._options = options
        self._providers = list(providers)
        self._reshape = reshape  # config `reshape`s (server/models/config_tensors.py)
        self._name = name
        self._workers = workers  # executor threads: batches one instance runs at once
        self._faults = faults
        self._identity = identity  # backend "identity": no onnxruntime session
        self._max_batch_size = max_batch_size
        self._made = 0  # instances made: the next one's id, counted as Triton's identity backend does
        # Each instance's providers (its device), so that a replacement runs where it ran.
        self._slot_providers: dict[int, list[Provider]] = {}

    def session(self, providers: Sequence[Provider] | None = None, instance_id: int | None = None) -> Session:
        """A new instance with its own executor (`providers`: for its device; `instance_id`: the
        one it replaces, else the next)."""
        if self._faults is not None and self._faults.load_error:
            raise BackendLoadError(
                f"model '{self._name}': failed to load on purpose (parameters '{LOAD_ERROR}')"
            )
        initial = instance_id is None  # one of the load's instances, not a replacement
        if instance_id is None:
            instance_id, self._made = self._made, self._made + 1
            if instance_id == 0 and self._faults is not None and self._faults.load_gate:
                wait_at_gate(
                    f"model {self._name}: load", self._faults.load_gate
                )  # fault_load_gate: the version's load held
        elif self._faults is not None and self._faults.replace_gate:  # a stuck instance's replacement
            wait_at_gate(
                f"model {self._name}: instance {instance_id} replaced",
                self._faults.replace_gate,
                REPLACE_GATE,
            )
        if self._identity is not None:
            if instance_id == 0 and self._identity.creation_delay_s > 0:
                time.sleep(self._identity.creation_delay_s)  # creation_delay_sec, as Triton: off the loop
            prefix = f"identity-{self._name}"
            executor = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix=prefix)
            return IdentityBackend(
                self._identity,
                executor,
                model_name=self._name,
                instance_id=instance_id,
                reshape=self._reshape,
                max_batch_size=self._max_batch_size,
            )
        executor = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix=f"ort-{self._name}")
        if providers is not None:
            self._slot_providers[instance_id] = list(providers)
        chosen = self._slot_providers.get(instance_id, self._providers)
        if self._shared is not None and self._shared.holds(chosen):
            hosted = self._hosted(chosen, instance_id, executor)
            if hosted is not None:
                return hosted
        key = tuple(name for name, _ in chosen)
        more = initial and instance_id + 1 < self._planned  # the load makes more after this one
        # Only an instance that prepared its own graph keeps it (`backend.prepared`).
        backend = OrtBackend(
            self._path, self._options, chosen, executor, model_name=self._name, reshape=self._reshape,
            prepared=self._prepared.get(key), keep_prepared=more,
        )  # fmt: skip
        if backend.prepared is not None:
            self._prepared[key] = backend.prepared
        if not more:
            self._prepared.clear()  # the load's last instance (or a replacement): nothing held
        return backend

    def _hosted(
        self, providers: Sequence[Provider], slot: int, executor: ThreadPoolExecutor
    ) -> HostedBackend | None:
        """The instance as the session host's shared session, or None (it runs here, as without
        the host) when the host will not hold it; the load's log says why, once per instance."""
        assert self._shared is not None
        shared = self._shared
        request = OpenRequest(
            str(self._path),
            shared.options,
            tuple(providers),
            self._name,
            slot,
            shared.max_rows,
            shared.fingerprint,
        )
        try:
            return HostedBackend(shared.socket, request, executor, reshape=self._reshape)
        except Unhostable as why:
            log.warning("model %s: instance %d runs here, not in the session host: %s", self._name, slot, why)
            return None
        except BaseException:
            executor.shutdown(wait=False)
            raise

    def wrap(self, session: Session) -> ModelInstance:
        """The instance the batcher runs: the session, or the session with its faults. An identity
        instance that waits is never run inline (identity_backend.py)."""
        instance: ModelInstance
        if self._faults is not None:
            instance = FaultBackend(session, self._faults)
        elif isinstance(session, IdentityBackend) and session.delay_s > 0:
            instance = OffLoop(session)
        else:
            instance = session
        return with_batch_axes(instance, self._batch_axes)

    def replacer(self, instances: list[ModelInstance]) -> ReplaceBackend:
        """For the batcher: replace a stuck instance of `instances` (updated in place)."""

        async def replace(stuck: Backend) -> Backend:
            # The fresh one first: should it fail, the stuck one stays, and a later timeout retries.
            slot = next((i for i, instance in enumerate(instances) if instance is stuck), None)
            fresh = self.wrap(await asyncio.to_thread(self.session, None, slot))
            index = next((i for i, instance in enumerate(instances) if instance is stuck), None)
            if index is None:  # replaced already: not ours to serve
                fresh.close()
                raise RuntimeError(f"model {self._name}: the stuck instance is no longer served")
            instances[index].abandon()
            instances[index] = fresh
            log.warning("model %s: instance %d replaced (new session and executor)", self._name, index)
            return fresh

        return replace


def factory_for(
    config: mc.ModelConfig,
    path: Path,
    settings: ServerSettings,
    source: str,
    *,
    faults: FaultSpec | None,
    batch_axes: Mapping[str, int] | None,
    gpus: Sequence[int] | None = None,
    fingerprint: object = None,
) -> tuple[InstanceFactory, InstancePlan]:
    """The instances of a completed config: their factory (onnxruntime sessions, or identity
    instances for `backend: "identity"`) and the plan of which to make, in order."""
    reshape = ReshapePlan.from_config(config)
    workers = settings.max_batches_in_flight
    if config.backend == IDENTITY:
        spec = IdentitySpec.from_config(config, source)
        factory = InstanceFactory(
            path, OrtOptions(), [], name=config.name, workers=workers, faults=faults,
            batch_axes=batch_axes, reshape=reshape, identity=spec, max_batch_size=config.max_batch_size,
        )  # fmt: skip
        return factory, identity_plan(config, spec)
    base = OrtOptions(
        intra_op_threads=settings.intra_op_threads,
        inter_op_threads=settings.inter_op_threads,
        allow_spinning=settings.allow_spinning,
        graph_optimization_level=settings.graph_optimization_level,
    )
    options = ort_options_for(config, base)
    check_tensorrt_paths(config, path.parent.parent, settings.cache_dir, source)  # a client's config too
    engines = engine_cache_dir(settings.cache_dir / "tensorrt", config.name, path.parent.name)
    # groups, devices (`gpus`: the visible ones, found off the event loop by the caller)
    # A config without instance_group: Triton's default (each visible GPU) unless the setting was given.
    implicit = "execution_providers" not in settings.model_fields_set
    plan = plan_instances(
        config, settings.execution_providers, engine_cache=engines, gpus=gpus, implicit_on_gpus=implicit
    )
    shared = None
    if settings.session_host is not None and settings.shared_sessions != "off" and not batch_axes:
        # Batches of a sequence model or one without dynamic batching run as they are, never merged.
        merge = dynamic_batching_enabled(config) and not config.HasField("sequence_batching")
        rows = config.max_batch_size if merge else 0
        threads = settings.session_host_threads
        hosted = ort_options_for(config, dataclasses.replace(base, intra_op_threads=threads))
        every = settings.shared_sessions == "all"
        shared = SharedSessions(settings.session_host, every, rows, hosted, repr(fingerprint))
    factory = InstanceFactory(
        path, options, plan.providers, name=config.name, workers=workers, faults=faults,
        batch_axes=batch_axes, reshape=reshape, planned=len(plan.slots), shared=shared,
    )  # fmt: skip
    return factory, plan
