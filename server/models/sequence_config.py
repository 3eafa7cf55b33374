"""`sequence_batching` in config.pbtxt: validate it against the ONNX graph and build its spec.

Control inputs and implicit-state tensors are graph inputs/outputs that the server fills, not the
client: they are left out of the model's public inputs and outputs
(config_fields.sequence_hidden_names). What is not implemented is refused naming the field
(iterative_sequence, use_growable_memory, direct's minimum_slot_utilization, a STRING state's
data_file). A model without a batch dimension (max_batch_size 0) runs each request alone; its
control and state tensors then have no batch dimension either. A STRING state starts as empty
strings; a state's variable (-1) dims start as 1 without initial_state.dims, as in Triton.

A state tensor's batch dimension is axis 0 unless the model parameter
`sequence_state_batch_axis` says otherwise ("<state input_name>:<axis>[,...]", e.g. Silero VAD's
state f32[2, B, 128] is "state:1"); the axis applies to the state's input and output alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from batcher.dynamic import DynamicBatcher
from batcher.sequence import Runner, SequenceBatcher
from batcher.sequence_types import ControlKind, ControlSpec, SequenceLimits, SequenceSpec, StateSpec
from batcher.types import BatchingPolicy
from protos import model_config_pb2 as mc
from server import datatypes
from server.models.config import ConfigError
from server.models.model_files import read_model_file
from server.models.onnx_completion import OnnxTensor
from server.settings import ServerSettings
from server.whole_numbers import whole_number

BATCH_AXIS_PARAMETER = "sequence_state_batch_axis"
DEFAULT_IDLE_US = 1_000_000  # Triton's default max_sequence_idle_microseconds
_Control = mc.ModelSequenceBatching.Control
_KINDS = {
    _Control.CONTROL_SEQUENCE_START: ControlKind.START,
    _Control.CONTROL_SEQUENCE_END: ControlKind.END,
    _Control.CONTROL_SEQUENCE_READY: ControlKind.READY,
    _Control.CONTROL_SEQUENCE_CORRID: ControlKind.CORRID,
}
_CORRID_TYPES = (mc.TYPE_UINT64, mc.TYPE_INT64, mc.TYPE_UINT32, mc.TYPE_INT32, mc.TYPE_STRING)


@dataclass(frozen=True, slots=True)
class SequenceModel:
    spec: SequenceSpec
    batch_axes: Mapping[str, int]  # graph tensor -> its batch axis, where not 0


def sequence_policy(config: mc.ModelConfig, base: BatchingPolicy) -> BatchingPolicy:
    """The runner's batching policy: sequences' next requests share batches up to max_batch_size."""
    sb = config.sequence_batching
    strategy = sb.oldest if sb.WhichOneof("strategy_choice") == "oldest" else sb.direct
    preferred = tuple(sorted(set(sb.oldest.preferred_batch_size)))
    return dataclasses.replace(
        base,
        max_batch_size=config.max_batch_size,
        preferred_batch_sizes=preferred,
        max_queue_delay_s=strategy.max_queue_delay_microseconds / 1e6,
    )


def sequence_model(
    config: mc.ModelConfig,
    onnx_inputs: Sequence[Any],
    onnx_outputs: Sequence[Any],
    directory: Path,
    source: str,
) -> SequenceModel | None:
    """The spec of a completed config's sequence_batching (None without one); ConfigError naming
    the field when it cannot be served."""
    if not config.HasField("sequence_batching"):
        return None
    sb = config.sequence_batching
    where = f"{source}: sequence_batching"
    _refuse_unsupported(config, where)
    graph_in = {t.name: t for t in map(_tensor, onnx_inputs)}
    graph_out = {t.name: t for t in map(_tensor, onnx_outputs)}
    batched = config.max_batch_size > 0
    axes = _batch_axes(config, sb, source)
    if axes and not batched:
        raise ConfigError(
            f"{source}: parameters '{BATCH_AXIS_PARAMETER}' needs max_batch_size > 0 (no batch dimension)"
        )
    controls = tuple(_control(entry, graph_in, batched, where) for entry in sb.control_input)
    kinds = [c.kind for c in controls]
    if len(set(kinds)) != len(kinds):
        raise ConfigError(f"{where}.control_input: a control kind is given twice")
    _refuse_repeated_states(sb, where)
    states = tuple(
        _state(
            i,
            state,
            graph_in,
            graph_out,
            axes.get(state.input_name, 0) if batched else None,
            directory,
            where,
        )
        for i, state in enumerate(sb.state)
    )
    graph_axes = {}
    for state in sb.state:
        if axes.get(state.input_name, 0):
            graph_axes[state.input_name] = graph_axes[state.output_name] = axes[state.input_name]
    idle_us = sb.max_sequence_idle_microseconds or DEFAULT_IDLE_US
    answered = frozenset(s.output_name for s in states) & {o.name for o in config.output}
    return SequenceModel(SequenceSpec(controls, states, idle_us / 1e6, batched, answered), graph_axes)


def _refuse_repeated_states(sb: mc.ModelSequenceBatching, where: str) -> None:
    """Two states of one input_name (Triton refuses them: "specified more than once"): each had
    overwritten the one before, so the initial state was the last one listed, with no word."""
    first: dict[str, int] = {}
    for index, state in enumerate(sb.state):
        name = state.input_name
        if name and name in first:
            raise ConfigError(
                f"{where}.state[{index}]: input_name '{name}' is also state[{first[name]}]'s "
                "(each state input is listed once)"
            )
        first.setdefault(name, index)


def _tensor(item: Any) -> OnnxTensor:
    if isinstance(item, tuple):
        return OnnxTensor(str(item[0]), str(item[1]), list(item[2]))
    return OnnxTensor(item.name, item.type, list(item.shape))


def _refuse_unsupported(config: mc.ModelConfig, where: str) -> None:
    sb = config.sequence_batching
    if sb.iterative_sequence:
        raise ConfigError(f"{where}.iterative_sequence is not supported")
    if sb.WhichOneof("strategy_choice") == "direct" and sb.direct.minimum_slot_utilization:
        raise ConfigError(f"{where}.direct.minimum_slot_utilization is not supported")
    if config.response_cache.enable:
        raise ConfigError(f"{where}: response_cache cannot be enabled (answers depend on the state)")
    for size in sb.oldest.preferred_batch_size:
        if not 0 < size <= config.max_batch_size:
            raise ConfigError(
                f"{where}.oldest.preferred_batch_size {size} is not within 1..max_batch_size "
                f"({config.max_batch_size})"
            )
    for i, state in enumerate(sb.state):
        if state.use_growable_memory:
            raise ConfigError(f"{where}.state[{i}].use_growable_memory is not supported")


def _batch_axes(config: mc.ModelConfig, sb: mc.ModelSequenceBatching, source: str) -> dict[str, int]:
    if BATCH_AXIS_PARAMETER not in config.parameters:
        return {}
    text = config.parameters[BATCH_AXIS_PARAMETER].string_value
    where = f"{source}: parameters '{BATCH_AXIS_PARAMETER}'"
    names = {s.input_name for s in sb.state}
    axes: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, axis = item.rpartition(":")
        number = whole_number(axis, 2**31 - 1) if sep else None
        if number is None:
            raise ConfigError(f"{where}: '{item}' is not '<state input_name>:<axis>'")
        if name not in names:
            raise ConfigError(f"{where}: '{name}' is not a state input_name (states: {sorted(names)})")
        axes[name] = number
    return axes


def _control(entry: Any, graph: Mapping[str, OnnxTensor], batched: bool, where: str) -> ControlSpec:
    here = f"{where}.control_input '{entry.name}'"
    if len(entry.control) != 1:
        raise ConfigError(f"{here}: give exactly one control (got {len(entry.control)})")
    control = entry.control[0]
    kind = _KINDS[control.kind]
    tensor = graph.get(entry.name)
    if tensor is None:
        raise ConfigError(f"{here} is not an input of the ONNX model (its inputs: {sorted(graph)})")
    if kind is ControlKind.CORRID:
        if control.data_type not in _CORRID_TYPES:
            names = [datatypes.config_name(t) for t in _CORRID_TYPES]
            raise ConfigError(f"{here}: CONTROL_SEQUENCE_CORRID data_type must be one of {names}")
        dtype = datatypes.BY_CONFIG[control.data_type]
        spec = ControlSpec(entry.name, kind, dtype.numpy)
    else:
        dtype, (false, true) = _flag_values(control, here)
        spec = ControlSpec(entry.name, kind, dtype.numpy, false, true)
    _check_graph(tensor, dtype, [1], 0 if batched else None, here)
    return spec


def _flag_values(control: Any, here: str) -> tuple[datatypes.Datatype, tuple[Any, Any]]:
    given = [
        (field, values)
        for field, values in (
            ("int32_false_true", control.int32_false_true),
            ("fp32_false_true", control.fp32_false_true),
            ("bool_false_true", control.bool_false_true),
        )
        if values
    ]
    if len(given) != 1 or len(given[0][1]) != 2:
        raise ConfigError(
            f"{here}: give exactly one of int32_false_true, fp32_false_true, bool_false_true, "
            "with two values (false, true)"
        )
    field, values = given[0]
    wire = {"int32_false_true": "INT32", "fp32_false_true": "FP32", "bool_false_true": "BOOL"}[field]
    return datatypes.BY_WIRE[wire], (values[0], values[1])


def _state(
    index: int,
    state: Any,
    graph_in: Mapping[str, OnnxTensor],
    graph_out: Mapping[str, OnnxTensor],
    axis: int | None,
    directory: Path,
    where: str,
) -> StateSpec:
    """One state's spec; `axis` is its batch axis, None for a model without a batch dimension."""
    here = f"{where}.state[{index}]"
    if not state.input_name or not state.output_name:
        raise ConfigError(f"{here}: input_name and output_name are both required")
    dtype = datatypes.BY_CONFIG.get(state.data_type)
    if dtype is None:
        raise ConfigError(f"{here}: data_type {datatypes.config_name(state.data_type)} is not supported")
    ends = ((state.input_name, graph_in, "input"), (state.output_name, graph_out, "output"))
    for name, graph, kind in ends:
        tensor = graph.get(name)
        if tensor is None:
            raise ConfigError(
                f"{here}: '{name}' is not an {kind} of the ONNX model (its {kind}s: {sorted(graph)})"
            )
        _check_graph(tensor, dtype, list(state.dims), axis, f"{here} {kind} '{name}'")
    if len(state.initial_state) > 1:
        raise ConfigError(f"{here}.initial_state: at most one is supported")
    initial = _initial(state, dtype, axis is not None, directory, here)
    if axis is not None and axis > initial.ndim - 1:
        raise ConfigError(f"{here}: batch axis {axis} is beyond the state's {initial.ndim - 1} dims")
    initial.flags.writeable = False  # shared by every new sequence
    return StateSpec(state.input_name, state.output_name, initial)


def _initial(state: Any, dtype: datatypes.Datatype, batched: bool, directory: Path, here: str) -> np.ndarray:
    dims = list(state.dims)
    init = state.initial_state[0] if state.initial_state else None
    if init is not None:  # what Triton requires of one (its sequence batcher's initial state)
        if not init.name:
            raise ConfigError(f"{here}.initial_state: name is required")
        if init.WhichOneof("state_data") is None:
            raise ConfigError(f"{here}.initial_state: zero_data or data_file is required")
        if init.data_type not in (mc.TYPE_INVALID, state.data_type):
            raise ConfigError(f"{here}.initial_state: data_type differs from the state's")
    if init is not None and init.dims:
        if len(init.dims) != len(dims) or any(d not in (-1, i) for d, i in zip(dims, init.dims, strict=True)):
            raise ConfigError(f"{here}.initial_state: dims {list(init.dims)} do not fit the state's {dims}")
        dims = list(init.dims)
        if any(d < 0 for d in dims):
            raise ConfigError(f"{here}.initial_state: dims {dims} must be fixed")
    else:  # Triton's rule: a variable dim starts as 1; later the state is the last run's output
        dims = [1 if d == -1 else d for d in dims]
    shape = (1, *dims) if batched else tuple(dims)
    if init is None or init.WhichOneof("state_data") != "data_file":
        if dtype is datatypes.BYTES:  # STRING's zero: empty strings
            return np.full(shape, b"", dtype=object)
        return np.zeros(shape, dtype.numpy)
    if dtype is datatypes.BYTES:
        raise ConfigError(f"{here}.initial_state.data_file: not supported for a TYPE_STRING state")
    # Triton's place for it: <model>/initial_state/<data_file>, and nowhere else (model_files.py).
    want = int(np.prod(shape)) * dtype.numpy.itemsize
    where = f"{here}.initial_state.data_file '{init.data_file}'"
    raw = read_model_file(directory, f"initial_state/{init.data_file}", where, want, expected_bytes=want)
    return np.frombuffer(raw, dtype.numpy).reshape(shape).copy()


def _check_graph(
    tensor: OnnxTensor, dtype: datatypes.Datatype, dims: list[int], axis: int | None, here: str
) -> None:
    """The graph tensor has the dtype, and its shape is `dims` with a variable batch dim at `axis`
    (just `dims` when `axis` is None: a model without a batch dimension)."""
    if tensor.type != dtype.onnx:
        raise ConfigError(f"{here}: data type {dtype.wire} does not match the ONNX model's {tensor.type}")
    shape = list(tensor.shape)
    if axis is None:
        model = [d if isinstance(d, int) and d >= 0 else -1 for d in shape]
        if len(model) != len(dims) or any(
            m not in (-1, d) and d != -1 for m, d in zip(model, dims, strict=True)
        ):
            raise ConfigError(
                f"{here}: dims {dims} do not match the ONNX model's shape {shape} (no batch dimension)"
            )
        return
    if len(shape) != len(dims) + 1 or axis >= len(shape):
        raise ConfigError(
            f"{here}: the ONNX model's shape {shape} is not dims {dims} plus a batch dimension at axis {axis}"
        )
    batch = shape.pop(axis)
    model = [d if isinstance(d, int) and d >= 0 else -1 for d in shape]
    fixed_batch = isinstance(batch, int) and batch >= 0
    if fixed_batch or any(m not in (-1, d) and d != -1 for m, d in zip(model, dims, strict=True)):
        raise ConfigError(
            f"{here}: dims {dims} with a variable batch dimension at axis {axis} do not match the "
            f"ONNX model's shape {list(tensor.shape)}"
        )


def sequence_batcher(
    model: SequenceModel, runner: Runner, settings: ServerSettings, name: str
) -> SequenceBatcher:
    """The model version's SequenceBatcher over its DynamicBatcher, bounded by the server's limits."""
    limits = SequenceLimits(settings.max_sequences, settings.max_sequence_state_bytes)
    hint = unknown_sequence_hint(settings)
    # A request waiting its sequence's turn gives up by its model queue's rule, counted there.
    deadlines = runner.turn_deadline if isinstance(runner, DynamicBatcher) else None
    return SequenceBatcher(runner, model.spec, limits, model=name, unknown_hint=hint, deadlines=deadlines)


def unknown_sequence_hint(settings: ServerSettings) -> str:
    """What "never started" adds under --workers: 40 of 50 continuations sent over other
    connections than their start's failed under --workers 2, with nothing saying why."""
    if settings.worker_index is None:
        return ""
    return (
        "; with --workers each worker process keeps its own sequences: send all of a "
        "sequence's requests over one connection (one channel, or a stream)"
    )
