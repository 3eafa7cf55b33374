"""What a request for a lazy model that is not loaded is judged by (server/protocol/declared.py):
the signatures its next load would serve, read from its config, or from its ONNX graph where the
config leaves tensors to it, without starting a session (a model never loaded yet had been loaded
by an invalid request, then refused). And one shared read for concurrent requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

from protos import model_config_pb2 as mc
from server.models.completion import complete_version
from server.models.config import validate_config
from server.models.dim_ties import dim_ties
from server.models.ensemble_config import is_ensemble
from server.models.onnx_completion import OnnxTensor
from server.models.repository import ModelSource
from server.models.routing_key import RoutedRequest, pick_version
from server.models.traffic import Slices, TrafficPolicy, parse_policy
from server.protocol.validate import Signature

T = TypeVar("T")


def declares_everything(config: mc.ModelConfig) -> bool:
    """Inputs and outputs all listed with their data types and dims: completion from the graph
    changes nothing a request is judged by (it only checks them, and max_batch_size is completed
    only for a config listing no inputs), so the config alone says what the load will serve."""
    tensors = [*config.input, *config.output]
    return (
        bool(config.input)
        and bool(config.output)
        and all(t.data_type != mc.TYPE_INVALID and len(t.dims) > 0 for t in tensors)
    )


def completed_config(source: ModelSource, number: int, default_max_batch_size: int) -> mc.ModelConfig:
    return completed_with_inputs(source, number, default_max_batch_size)[0]


def completed_with_inputs(
    source: ModelSource, number: int, default_max_batch_size: int
) -> tuple[mc.ModelConfig, list[OnnxTensor]]:
    """The completed config, with the graph's inputs where it was read (none where the config
    declares everything: the graph is not read for it)."""
    inputs: list[OnnxTensor] = []  # with the overridable initializers the config lists
    if declares_everything(source.config):
        config = mc.ModelConfig()
        config.CopyFrom(source.config)
        config.name = source.name
    else:  # the graph's inputs and outputs, read with onnx (no weights loaded, no session)
        config, graph_inputs, _, listed = complete_version(
            source, source.versions[number], default_max_batch_size
        )
        inputs = [*graph_inputs, *listed]
    validate_config(config, source.where)  # as the load does after completing it
    return config, inputs


def _predicted(source: ModelSource, number: int, default_max_batch_size: int) -> Signature:
    config, inputs = completed_with_inputs(source, number, default_max_batch_size)
    return Signature.from_config(config, dim_ties(config, inputs))


@dataclass(frozen=True, slots=True)
class UnnamedRouting:
    """How the loaded model routes a request naming no version, as its config says: without a
    traffic policy to the newest (Triton's version_policy), with one by its weights and sticky key
    (Rollout.route, by the same `pick_version`)."""

    newest: int
    slices: Slices | None = None  # None: no traffic policy
    sticky_key: str = ""
    policy: TrafficPolicy | None = None  # the config's, as its load's state reads it
    served: frozenset[int] = frozenset()  # the versions its load serves

    def weighed(self, weights: Mapping[int, int]) -> UnnamedRouting:
        """This routing by `weights` that its config does not set (an operator's or a rollback's,
        kept for its load: Rollout.kept, or logged under --workers), its sticky key the config's."""
        return replace(self, slices=Slices.of(weights))

    @property
    def only(self) -> int | None:
        """The one version every such request reaches; None when the weights split the traffic."""
        if self.slices is None:
            return self.newest
        return self.slices.versions[0] if len(self.slices.versions) == 1 else None

    def pick(self, request: RoutedRequest, draw: Callable[[], float]) -> tuple[int, float]:
        """The version the loaded model routes `request` to, and the random point drawn for it
        (`draw`), to route it by once loaded (used only when it has no routing key). Raises the
        loaded routing's InvalidRequest for a sticky key parameter of the wrong type."""
        point = draw()
        if self.slices is None:
            return self.newest, point
        return pick_version(self.slices, self.sticky_key, request, lambda: point), point


def unnamed_routing(source: ModelSource) -> UnnamedRouting | None:
    """`source`'s routing of requests naming no version once loaded; None when its load refuses
    its policy (ConfigError: its load says what is wrong) or it serves no version."""
    served = sorted(source.versions)
    try:
        policy = parse_policy(source.config, source.where, served)
    except Exception:  # ConfigError: its load says what is wrong
        return None
    if not served:
        return None
    if policy is None:
        return UnnamedRouting(served[-1], served=frozenset(served))
    return UnnamedRouting(served[-1], Slices.of(policy.weights), policy.sticky_key, policy, frozenset(served))


def unnamed_version(source: ModelSource) -> int | None:
    """The version a request naming no version reaches once `source` is loaded, as its config says:
    without a traffic policy the newest (Triton's version_policy); with one whose weights give a
    single version all the traffic (or that sets none: the newest), that version. None when its
    weights split the traffic (routing picks per request), or the policy is one its load refuses."""
    routing = unnamed_routing(source)
    return None if routing is None else routing.only


def predicted_signatures(source: ModelSource, default_max_batch_size: int) -> dict[int, Signature] | None:
    """The signature of each version `source`'s load would serve; None when not known here (a
    config or graph the load will refuse: its load says what is wrong). An ensemble's is its config's
    own, as its load makes it (it declares every input and output; its steps judge the rest once
    loaded): an invalid request had loaded it and its steps, evicting others. Blocks (reads the
    graphs): call it off the event loop."""
    if is_ensemble(source.config):  # read and checked by load_model_source already, as a load does
        return {number: Signature.from_config(source.config) for number in source.versions}
    try:
        return {number: _predicted(source, number, default_max_batch_size) for number in source.versions}
    except Exception:  # ConfigError, BackendLoadError (not a readable graph), OSError, ...
        return None


class FreshRuns(Generic[T]):
    """`get(name)` awaits `run(name)`: concurrent callers share one run, and a caller joins only a
    run that has not started yet, so what it reads (files) is never older than the call."""

    def __init__(self, run: Callable[[str], Awaitable[T]]) -> None:
        self._run = run
        self._waiting: dict[str, asyncio.Task[T]] = {}  # the next run for each name, not started
        self._running: dict[str, asyncio.Task[T]] = {}

    async def get(self, name: str) -> T:
        task = self._waiting.get(name)
        if task is None:
            task = asyncio.create_task(self._start(name, self._running.get(name)), name=f"read {name}")
            self._waiting[name] = task
        return await asyncio.shield(task)  # a caller that gives up leaves the run to the others

    async def _start(self, name: str, before: asyncio.Task[T] | None) -> T:
        me = asyncio.current_task()
        assert me is not None  # a coroutine run as a task
        try:
            if before is not None:
                await asyncio.wait([before])  # its outcome is its callers'
            del self._waiting[name]  # from now, a caller waits for a later run
            self._running[name] = me
            return await self._run(name)
        finally:
            if self._waiting.get(name) is me:
                del self._waiting[name]
            if self._running.get(name) is me:
                del self._running[name]
