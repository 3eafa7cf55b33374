"""Triton's `identity` backend, built in: every output is a copy of its input.

Triton's test backend, used by its QA suite for the pass-through (`nop_*`) steps of every QA
ensemble and for `custom_zero_*` models. Selected with `backend: "identity"`; a version directory
needs no model file (an empty one is a valid version). Nothing is completed from a graph, so the
config lists every input and output with its data_type and dims. As Triton's backend:

- As many outputs as inputs, paired INPUT<k> with OUTPUT<k> when every name follows that pattern
  (the suffixes must then match), else by position (the i-th input with the i-th output).
- A pair agrees in data_type and in the model's dims (`reshape.shape` where given, else `dims`).
- `execute_delay_ms`: each run first waits that long, on the instance's executor thread (never the
  event loop); with `instance_wise_delay_multiplier` m, instance k (from 0) waits
  `execute_delay_ms * max(k * m, 1)`. `creation_delay_sec`: the version's load waits that long
  before its first instance. Other parameters that neither this backend nor sluiceway reads are
  ignored, named in the model's one load warning.
- An optional input left out of a request: its output is zeros of the input's dims (when fixed).

Batching, reshape, statistics, warm-up and the rest go through the same paths as an ONNX model.
"""

from __future__ import annotations

import asyncio
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from batcher.types import Array, Tensors
from protos import model_config_pb2 as mc
from server import datatypes
from server.backends.instance_groups import InstancePlan, instance_slots
from server.models.config import IDENTITY, SUPPORTED_PARAMETERS, ConfigError
from server.models.config_backend import ORT_PARAMETERS
from server.models.config_tensors import ReshapePlan, model_dims

EXECUTE_DELAY = "execute_delay_ms"
DELAY_MULTIPLIER = "instance_wise_delay_multiplier"
CREATION_DELAY = "creation_delay_sec"
IDENTITY_PARAMETERS = frozenset({EXECUTE_DELAY, DELAY_MULTIPLIER, CREATION_DELAY})
# What an identity model's parameters may mean: this backend's and sluiceway's own (not onnxruntime's).
_READ = IDENTITY_PARAMETERS | (SUPPORTED_PARAMETERS - frozenset(ORT_PARAMETERS))


@dataclass(frozen=True, slots=True)
class IdentitySpec:
    """What an identity model's config asks for, checked."""

    pairs: tuple[tuple[str, str], ...]  # (input, output)
    zeros: tuple[tuple[str, int, tuple[int, ...]], ...]  # optional input: (name, data_type, dims)
    execute_delay_s: float = 0.0
    delay_multiplier: int = 0
    creation_delay_s: float = 0.0
    ignored: tuple[str, ...] = ()  # parameters nobody reads (for the load warning)

    @classmethod
    def from_config(cls, config: mc.ModelConfig, source: str) -> IdentitySpec:
        """ConfigError naming the tensors or the parameter when the config cannot be served."""
        where = f"{source}: backend '{IDENTITY}'"
        pairs = _pairs(config, where)
        ins = {t.name: t for t in config.input}
        outs = {t.name: t for t in config.output}
        for in_name, out_name in pairs:
            a, b = ins[in_name], outs[out_name]
            what = f"{where} pairs input '{in_name}' with output '{out_name}'"
            if a.data_type != b.data_type:
                names = (datatypes.config_name(a.data_type), datatypes.config_name(b.data_type))
                raise ConfigError(f"{what}, but their data_types differ ({names[0]} and {names[1]})")
            if model_dims(a) != model_dims(b):
                raise ConfigError(
                    f"{what}, but their dims differ ({model_dims(a)} and {model_dims(b)}; "
                    "reshape.shape where given)"
                )
        params = {key: config.parameters[key].string_value.strip() for key in config.parameters}
        return cls(
            pairs=pairs,
            zeros=tuple((t.name, t.data_type, tuple(model_dims(t))) for t in config.input if t.optional),
            execute_delay_s=_number(params, EXECUTE_DELAY, where) / 1e3,
            delay_multiplier=int(_number(params, DELAY_MULTIPLIER, where, whole=True)),
            creation_delay_s=_number(params, CREATION_DELAY, where),
            ignored=tuple(sorted(set(params) - _READ)),
        )

    def delay_s(self, instance_id: int) -> float:
        """How long each run of instance `instance_id` (from 0) waits, as Triton's backend."""
        return self.execute_delay_s * max(self.delay_multiplier * instance_id, 1)


def paired_input(config: mc.ModelConfig, output: str) -> str | None:
    """The input an identity model copies to `output` (None when the config cannot be served)."""
    try:
        return next((i for i, o in _pairs(config, "") if o == output), None)
    except ConfigError:
        return None


def _pairs(config: mc.ModelConfig, where: str) -> tuple[tuple[str, str], ...]:
    ins = [t.name for t in config.input]
    outs = [t.name for t in config.output]
    if len(ins) != len(outs):
        raise ConfigError(f"{where} needs as many outputs as inputs (inputs {ins}, outputs {outs})")
    if all(n.startswith("INPUT") for n in ins) and all(n.startswith("OUTPUT") for n in outs):
        by_suffix = {n[len("OUTPUT") :]: n for n in outs}
        unmatched = [n for n in ins if n[len("INPUT") :] not in by_suffix]
        if unmatched:
            raise ConfigError(
                f"{where} pairs INPUT<k> with OUTPUT<k>: inputs {unmatched} have no output "
                f"of the same suffix (outputs {outs})"
            )
        return tuple((n, by_suffix[n[len("INPUT") :]]) for n in ins)
    return tuple(zip(ins, outs, strict=True))


def _number(params: dict[str, str], key: str, where: str, *, whole: bool = False) -> float:
    text = params.get(key, "0")
    try:
        value = float(text) if not whole or text.isdigit() else -1.0
    except ValueError:
        value = -1.0
    if not (value >= 0 and math.isfinite(value)):
        good = "a whole number >= 0" if whole else "a number >= 0"
        raise ConfigError(f"{where}: parameters '{key}' must be {good}, got '{text}'")
    return value


def complete_identity(config: mc.ModelConfig, source: str) -> mc.ModelConfig:
    """A copy of `config`, checked for the identity backend (there is no graph to complete it from)."""
    where = f"{source}: backend '{IDENTITY}'"
    if not config.input:
        raise ConfigError(f"{where} needs its inputs and outputs listed (no model file to read them from)")
    for kind, tensors in (("input", config.input), ("output", config.output)):
        for tensor in tensors:
            if tensor.data_type == mc.TYPE_INVALID:
                raise ConfigError(f"{where}: {kind} '{tensor.name}' needs a data_type")
    if config.HasField("sequence_batching"):
        raise ConfigError(f"{where}: sequence_batching is not supported with this backend")
    ragged = [t.name for t in config.input if t.allow_ragged_batch]
    if ragged or config.batch_input:
        raise ConfigError(
            f"{where}: allow_ragged_batch (inputs {ragged}) and batch_input are not supported "
            "with this backend (a ragged input's output could not be split back by request)"
        )
    IdentitySpec.from_config(config, source)
    done = mc.ModelConfig()
    done.CopyFrom(config)
    return done


def identity_plan(config: mc.ModelConfig, spec: IdentitySpec) -> InstancePlan:
    """The instances to make (every one on the CPU) and what the load warning says."""
    slots, _ = instance_slots(config, gpus=())
    notes = [f"parameters {list(spec.ignored)} (the identity backend does not read them)"] * bool(
        spec.ignored
    )
    if any(g.kind == mc.ModelInstanceGroup.KIND_GPU for g in config.instance_group):
        notes.append(f"KIND_GPU instance groups (the identity backend runs on the CPU: {len(slots)} in all)")
    accel = config.optimization.execution_accelerators
    if accel.gpu_execution_accelerator or accel.cpu_execution_accelerator:
        notes.append("optimization.execution_accelerators (the identity backend runs no graph)")
    return InstancePlan(slots, [], notes, config, ())


class IdentityBackend:
    """One instance, with its own executor like an onnxruntime one (RunsBlocking). With a delay,
    the factory hands the batcher `OffLoop(instance)`: the batcher's estimator counts CPU time,
    which a wait does not use, so it would find the runs cheap enough for the event loop."""

    def __init__(
        self,
        spec: IdentitySpec,
        executor: ThreadPoolExecutor,
        *,
        model_name: str,
        instance_id: int,
        reshape: ReshapePlan | None = None,
        max_batch_size: int = 0,
    ) -> None:
        self._spec = spec
        self._executor = executor  # owned: one per instance, max_workers = batches in flight
        self._name = model_name
        self._instance_id = instance_id
        self._delay_s = spec.delay_s(instance_id)
        self._reshape = reshape
        self._batched = max_batch_size > 0
        self._released = threading.Event()  # set by close/abandon: a waiting run ends at once

    @property
    def name(self) -> str:
        return self._name

    @property
    def instance_id(self) -> int:
        return self._instance_id

    @property
    def delay_s(self) -> float:
        return self._delay_s

    @property
    def executor(self) -> ThreadPoolExecutor:
        return self._executor

    async def run(self, inputs: Tensors) -> Tensors:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.run_blocking, inputs)

    def run_blocking(self, inputs: Tensors, *, log_failure: bool = True) -> dict[str, Array]:
        """One batch on the calling thread: each output a copy of its input (a request's input may
        be a view of its message or of a shared-memory region, which the answer may outlive).
        `log_failure`: as OrtBackend's (it logs nothing itself)."""
        if self._delay_s > 0:
            self._released.wait(self._delay_s)
        if self._reshape is not None:
            inputs = self._reshape.to_model(inputs)
        rows = next((a.shape[0] for a in inputs.values() if a.ndim > 0), 1) if self._batched else 0
        outputs: dict[str, Array] = {}
        for in_name, out_name in self._spec.pairs:
            array = inputs.get(in_name)
            if array is not None:
                outputs[out_name] = array.copy()
                continue
            zeros = self._zeros(in_name, rows)
            if zeros is not None:
                outputs[out_name] = zeros
        return outputs if self._reshape is None else self._reshape.to_wire(outputs)

    def _zeros(self, name: str, rows: int) -> Array | None:
        """The output of an optional input left out: zeros of its dims (none when they vary)."""
        for input_name, data_type, dims in self._spec.zeros:
            if input_name == name and -1 not in dims:
                shape = (rows, *dims) if self._batched else dims
                dtype = datatypes.BY_CONFIG[data_type].numpy
                return np.full(shape, b"", dtype=object) if dtype.kind == "O" else np.zeros(shape, dtype)
        return None

    def close(self) -> None:
        """Take no more batches; a run waiting out its delay ends at once."""
        self._released.set()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def abandon(self) -> None:
        self.close()


class OffLoop:
    """An instance the batcher never runs inline (it has no `run_blocking`): every run goes
    through the instance's own `run`, in its executor."""

    def __init__(self, inner: IdentityBackend) -> None:
        self._inner = inner

    @property
    def inner(self) -> IdentityBackend:
        return self._inner

    async def run(self, inputs: Tensors) -> Tensors:
        return await self._inner.run(inputs)

    def close(self) -> None:
        self._inner.close()

    def abandon(self) -> None:
        self._inner.abandon()
