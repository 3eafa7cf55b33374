"""The backend instances of one model version: how to make one, and how the watchdog replaces one.

An instance is an OrtBackend with its own executor, wrapped in a FaultBackend when the model's
config injects faults. The manager makes a version's instances here, and hands the batcher
`replacer(...)`: after a run outlived the watchdog's limit, the stuck instance is abandoned
(onnxruntime is asked to end its runs, its executor takes no more) and a fresh one, with a new
session and a new executor, takes its place, in the manager's list too (so stopping closes it).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from batcher.types import Backend, Tensors
from batcher.watchdog import ReplaceBackend
from protos import model_config_pb2 as mc
from server.backends.batch_axes import with_batch_axes
from server.backends.fault_backend import LOAD_ERROR, FaultBackend, FaultSpec
from server.backends.onnxruntime_backend import BackendLoadError, OrtBackend, OrtOptions, Provider
from server.models.config import RUN_TIMEOUT, ConfigError
from server.models.config_tensors import ReshapePlan

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
    ) -> None:
        self._path = path
        self._batch_axes = dict(batch_axes or {})  # tensors batched on another axis (batch_axes.py)
        self._options = options
        self._providers = list(providers)
        self._reshape = reshape  # config `reshape`s (server/models/config_tensors.py)
        self._name = name
        self._workers = workers  # executor threads: batches one instance runs at once
        self._faults = faults

    def session(self, providers: Sequence[Provider] | None = None) -> OrtBackend:
        """A new onnxruntime instance with its own executor (`providers`: for its device)."""
        if self._faults is not None and self._faults.load_error:
            raise BackendLoadError(
                f"model '{self._name}': failed to load on purpose (parameters '{LOAD_ERROR}')"
            )
        executor = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix=f"ort-{self._name}")
        chosen = self._providers if providers is None else providers
        return OrtBackend(
            self._path, self._options, chosen, executor, model_name=self._name, reshape=self._reshape
        )

    def wrap(self, session: OrtBackend) -> ModelInstance:
        """The instance the batcher runs: the session, or the session with its faults."""
        instance = session if self._faults is None else FaultBackend(session, self._faults)
        return with_batch_axes(instance, self._batch_axes)

    def replacer(self, instances: list[ModelInstance]) -> ReplaceBackend:
        """For the batcher: replace a stuck instance of `instances` (updated in place)."""

        async def replace(stuck: Backend) -> Backend:
            # The fresh one first: should it fail, the stuck one stays, and a later timeout retries.
            fresh = self.wrap(await asyncio.to_thread(self.session))
            index = next((i for i, instance in enumerate(instances) if instance is stuck), None)
            if index is None:  # replaced already: not ours to serve
                fresh.close()
                raise RuntimeError(f"model {self._name}: the stuck instance is no longer served")
            instances[index].abandon()
            instances[index] = fresh
            log.warning("model %s: instance %d replaced (new session and executor)", self._name, index)
            return fresh

        return replace
