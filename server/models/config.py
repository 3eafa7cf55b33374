"""Model configuration: parse `config.pbtxt`, complete it from the ONNX model, validate, map to policy.

A config may list nothing but a name: inputs, outputs and max_batch_size then come from the ONNX
graph (as Triton's auto-complete does). Whatever it does list is checked against the graph, and
fields that parse but that sluiceway does not support are errors that name the field.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from google.protobuf import text_format

from batcher.types import BatchingPolicy, TimeoutAction
from protos import model_config_pb2 as mc
from server import datatypes
from server.models.config_fields import unhandled_fields

logger = logging.getLogger(__name__)

PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
# Accelerator names as Triton's onnxruntime backend spells them.
GPU_ACCELERATORS = frozenset({"tensorrt", "cuda"})
CPU_ACCELERATORS = frozenset({"openvino"})
# Model-level `parameters`: those the onnxruntime backend reads (Triton's names), and ours.
IDLE_DISPATCH = "idle_dispatch"  # "true"/"false": overrides the server's --idle-dispatch
RUN_TIMEOUT = "run_timeout_s"  # seconds: overrides the server's --run-timeout-s (the watchdog)
# Fault injection (server/backends/fault_backend.py), refused unless allow_fault_injection is set.
FAULT_PARAMETERS = frozenset({"fault_raise_every", "fault_hang_every", "fault_hang_s", "fault_load_error"})
# Prediction sampling and drift (server/observability/sampling.py checks their values).
SAMPLE_RATIO, SAMPLE_WHAT, DRIFT_REFERENCE = "sample_ratio", "sample_what", "drift_reference"
SAMPLING_PARAMETERS = frozenset({SAMPLE_RATIO, SAMPLE_WHAT, DRIFT_REFERENCE})
SUPPORTED_PARAMETERS = (
    frozenset(
        {"intra_op_thread_count", "inter_op_thread_count", "execution_mode", IDLE_DISPATCH, RUN_TIMEOUT}
    )
    | FAULT_PARAMETERS
    | SAMPLING_PARAMETERS
)
_BOOLEANS = {"true": True, "false": False}
DEFAULT_MAX_BATCH_SIZE = 64


class ConfigError(Exception):
    """A model configuration that cannot be served; the message names the source and the field."""


class OnnxTensor(NamedTuple):
    """One graph input or output as onnxruntime describes it (`NodeArg` has the same attributes)."""

    name: str
    type: str  # onnxruntime type string, e.g. "tensor(float)"
    shape: Sequence[int | str | None]  # str or None: a symbolic / unknown dimension


_NO_FIELD = re.compile(r'Message type "([\w.]+)" has no field named "(\w+)"')


def parse_config(text: str, source: str) -> mc.ModelConfig:
    """Parse config.pbtxt text; `source` (usually the file path) prefixes every error."""
    config = mc.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as err:
        line, column = err.GetLine(), err.GetColumn()
        where = f"{source}:{line}:{column}" if line is not None else source
        # ParseError's text starts with its own "line:col : "; keep only the reason.
        reason = re.sub(r"^\d+:\d+ : ", "", str(err))
        missing = _NO_FIELD.search(reason)
        if missing:
            message, field = missing.groups()
            raise ConfigError(
                f"{where}: unsupported field '{field}' ({message} has no such field in sluiceway's "
                "ModelConfig subset; remove it)"
            ) from None
        raise ConfigError(f"{where}: {reason}") from None
    return config


def load_config_file(path: Path) -> mc.ModelConfig:
    """Read and parse one config.pbtxt."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read: {err}") from None
    return parse_config(text, str(path))


def _check_platform(config: mc.ModelConfig, source: str) -> None:
    if config.platform not in ("", PLATFORM):
        raise ConfigError(f"{source}: platform '{config.platform}' is not supported (only '{PLATFORM}')")
    if config.backend not in ("", BACKEND):
        raise ConfigError(f"{source}: backend '{config.backend}' is not supported (only '{BACKEND}')")
    if config.runtime not in ("", BACKEND):
        raise ConfigError(f"{source}: runtime '{config.runtime}' is not supported")


def _check_tensor(kind: str, tensor: Any, source: str) -> None:
    where = f"{source}: {kind} '{tensor.name}'"
    if not tensor.name:
        raise ConfigError(f"{source}: {kind} without a name")
    if tensor.HasField("reshape"):
        raise ConfigError(f"{where}: field 'reshape' is not supported")
    if tensor.data_type != mc.TYPE_INVALID and tensor.data_type not in datatypes.BY_CONFIG:
        raise ConfigError(f"{where}: data_type {datatypes.config_name(tensor.data_type)} is not supported")
    if any(d < -1 for d in tensor.dims):
        raise ConfigError(f"{where}: dims {list(tensor.dims)} has a value below -1")


def validate_config(config: mc.ModelConfig, source: str) -> None:
    """Reject configs that parse but ask for what sluiceway does not do. Every message names the field."""
    _check_platform(config, source)
    unhandled = unhandled_fields(config)
    if unhandled:
        raise ConfigError(
            f"{source}: {unhandled[0]} is not supported"
            + (f" (nor {', '.join(unhandled[1:])})" if len(unhandled) > 1 else "")
        )
    if config.max_batch_size < 0:
        raise ConfigError(f"{source}: max_batch_size {config.max_batch_size} is negative")
    for kind, tensors in (("input", config.input), ("output", config.output)):
        seen: set[str] = set()
        for tensor in tensors:
            _check_tensor(kind, tensor, source)
            if tensor.name in seen:
                raise ConfigError(f"{source}: {kind} '{tensor.name}' is listed twice")
            seen.add(tensor.name)
    for tensor in config.input:
        if tensor.optional:
            raise ConfigError(f"{source}: input '{tensor.name}': field 'optional' is not supported")
    for tensor in config.output:
        if tensor.label_filename:
            # Labels only serve the classification extension, which sluiceway does not implement.
            logger.warning("%s: output '%s': label_filename is ignored", source, tensor.name)
    _validate_instance_groups(config, source)
    _validate_version_policy(config, source)
    _validate_optimization(config, source)
    unknown = sorted(set(config.parameters) - SUPPORTED_PARAMETERS)
    if unknown:
        raise ConfigError(
            f"{source}: parameters {unknown} are not supported (known: {sorted(SUPPORTED_PARAMETERS)})"
        )
    if IDLE_DISPATCH in config.parameters:
        _idle_dispatch(config, source, default=False)
    if config.HasField("dynamic_batching"):
        _validate_dynamic_batching(config, source)


def validate_response_cache(config: mc.ModelConfig, source: str, cache_bytes: int) -> None:
    """A model enabling response_cache needs the server's cache (`response_cache_bytes` > 0)."""
    if config.response_cache.enable and cache_bytes <= 0:
        raise ConfigError(
            f"{source}: response_cache is enabled but the server has no response cache "
            "(response_cache_bytes is 0: set SLUICEWAY_RESPONSE_CACHE_BYTES or --response-cache-bytes "
            "above 0, or set response_cache { enable: false })"
        )


def _validate_instance_groups(config: mc.ModelConfig, source: str) -> None:
    for i, group in enumerate(config.instance_group):
        where = f"{source}: instance_group[{i}]"
        if group.kind == mc.ModelInstanceGroup.KIND_MODEL:
            raise ConfigError(f"{where}: kind KIND_MODEL is not supported (use KIND_CPU or KIND_GPU)")
        if group.count < 0:
            raise ConfigError(f"{where}: count {group.count} is negative")
        if group.gpus and group.kind == mc.ModelInstanceGroup.KIND_CPU:
            raise ConfigError(f"{where}: gpus {list(group.gpus)} given for kind KIND_CPU")
        if any(g < 0 for g in group.gpus):
            raise ConfigError(f"{where}: gpus {list(group.gpus)} has a negative device id")


def _validate_version_policy(config: mc.ModelConfig, source: str) -> None:
    policy = config.version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "latest" and policy.latest.num_versions < 1:
        raise ConfigError(f"{source}: version_policy.latest.num_versions must be at least 1")
    if choice == "specific":
        if not policy.specific.versions:
            raise ConfigError(f"{source}: version_policy.specific.versions is empty")
        if any(v < 1 for v in policy.specific.versions):
            raise ConfigError(
                f"{source}: version_policy.specific.versions {list(policy.specific.versions)} "
                "must be positive"
            )


def _validate_optimization(config: mc.ModelConfig, source: str) -> None:
    opt = config.optimization
    if opt.graph.level not in (-1, 0, 1):
        raise ConfigError(f"{source}: optimization.graph.level {opt.graph.level} is not -1, 0 or 1")
    if opt.priority != mc.ModelOptimizationPolicy.PRIORITY_DEFAULT:
        raise ConfigError(f"{source}: optimization.priority is not supported")
    accel = opt.execution_accelerators
    for field, known in (
        ("gpu_execution_accelerator", GPU_ACCELERATORS),
        ("cpu_execution_accelerator", CPU_ACCELERATORS),
    ):
        for entry in getattr(accel, field):
            if entry.name not in known:
                raise ConfigError(
                    f"{source}: optimization.execution_accelerators.{field} '{entry.name}' "
                    f"is not supported (known: {sorted(known)})"
                )
    groups = config.instance_group
    if (
        accel.gpu_execution_accelerator
        and groups
        and all(g.kind == mc.ModelInstanceGroup.KIND_CPU for g in groups)
    ):
        raise ConfigError(
            f"{source}: optimization.execution_accelerators.gpu_execution_accelerator needs a "
            "KIND_GPU or KIND_AUTO instance_group, but every group is KIND_CPU"
        )


def _validate_dynamic_batching(config: mc.ModelConfig, source: str) -> None:
    db = config.dynamic_batching
    where = f"{source}: dynamic_batching"
    if config.max_batch_size == 0 and config.input:
        # With inputs listed, max_batch_size 0 is a promise that the model has no batch dimension.
        raise ConfigError(f"{where} needs max_batch_size > 0")
    for size in db.preferred_batch_size:
        if size < 1:
            raise ConfigError(f"{where}.preferred_batch_size {size} must be positive")
        if config.max_batch_size > 0 and size > config.max_batch_size:
            raise ConfigError(
                f"{where}.preferred_batch_size {size} exceeds max_batch_size {config.max_batch_size}"
            )
    if db.priority_levels == 0 and db.default_priority_level != 0:
        raise ConfigError(
            f"{where}.default_priority_level {db.default_priority_level} given without priority_levels"
        )
    if db.default_priority_level > db.priority_levels:
        raise ConfigError(
            f"{where}.default_priority_level {db.default_priority_level} exceeds "
            f"priority_levels {db.priority_levels}"
        )
    if db.priority_queue_policy:
        raise ConfigError(f"{where}.priority_queue_policy is not supported (use default_queue_policy)")
    # preserve_ordering matters to streams only (a unary call has one answer): the stream session
    # (server/protocol/stream.py) sends such a model's answers in request order.


# --- completion from the ONNX graph -------------------------------------------------------------


def _as_tensor(item: Any) -> OnnxTensor:
    if isinstance(item, tuple):
        name, type_, shape = item
        return OnnxTensor(str(name), str(type_), list(shape))
    return OnnxTensor(item.name, item.type, list(item.shape))


def _dims(shape: Iterable[int | str | None]) -> list[int]:
    return [d if isinstance(d, int) and d >= 0 else -1 for d in shape]


def _is_batch_dim(shape: Sequence[int | str | None]) -> bool:
    return len(shape) > 0 and not (isinstance(shape[0], int) and shape[0] >= 0)


def _onnx_datatype(tensor: OnnxTensor, source: str) -> int:
    dt = datatypes.BY_ONNX.get(tensor.type)
    if dt is None:
        raise ConfigError(f"{source}: ONNX tensor '{tensor.name}' has unsupported type {tensor.type}")
    return dt.config


def _dims_match(config_dims: Sequence[int], model_dims: Sequence[int]) -> bool:
    return len(config_dims) == len(model_dims) and all(
        c == m or c == -1 or m == -1 for c, m in zip(config_dims, model_dims, strict=True)
    )


def _model_dims(kind: str, tensor: OnnxTensor, max_batch_size: int, source: str) -> list[int]:
    """The tensor's dims as the config states them: without the batch dimension when batching."""
    shape = list(tensor.shape)
    if max_batch_size == 0:
        return _dims(shape)
    if not _is_batch_dim(shape):
        raise ConfigError(
            f"{source}: max_batch_size is {max_batch_size} but ONNX {kind} '{tensor.name}' "
            f"has shape {shape} with no variable first (batch) dimension"
        )
    return _dims(shape[1:])


def _complete_tensors(
    kind: str, entries: Any, model: list[OnnxTensor], max_batch_size: int, source: str
) -> None:
    by_name = {t.name: t for t in model}
    for entry in entries:
        tensor = by_name.get(entry.name)
        if tensor is None:
            raise ConfigError(
                f"{source}: {kind} '{entry.name}' is not in the ONNX model (its {kind}s: {sorted(by_name)})"
            )
        model_type = _onnx_datatype(tensor, source)
        model_dims = _model_dims(kind, tensor, max_batch_size, source)
        if entry.data_type == mc.TYPE_INVALID:
            entry.data_type = model_type
        elif entry.data_type != model_type:
            raise ConfigError(
                f"{source}: {kind} '{entry.name}' data_type {datatypes.config_name(entry.data_type)} "
                f"does not match the ONNX model's {datatypes.config_name(model_type)} ({tensor.type})"
            )
        if not entry.dims and model_dims:
            entry.dims.extend(model_dims)
        elif not _dims_match(entry.dims, model_dims):
            what = "dims (without the batch dimension)" if max_batch_size > 0 else "dims"
            raise ConfigError(
                f"{source}: {kind} '{entry.name}' {what} {list(entry.dims)} do not match "
                f"the ONNX model's {model_dims} (-1 is variable)"
            )
    listed = {e.name for e in entries}
    for tensor in model:
        if tensor.name not in listed:
            dims = _model_dims(kind, tensor, max_batch_size, source)
            entries.add(name=tensor.name, data_type=_onnx_datatype(tensor, source), dims=dims)


def complete_from_onnx(
    config: mc.ModelConfig,
    onnx_inputs: Sequence[Any],
    onnx_outputs: Sequence[Any],
    *,
    default_max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    source: str = "config",
) -> mc.ModelConfig:
    """A copy of `config` with inputs, outputs, max_batch_size and platform filled in from the graph.

    `onnx_inputs`/`onnx_outputs` hold `OnnxTensor`s, (name, type, shape) tuples or onnxruntime
    `NodeArg`s. Whatever the config already lists must agree with the graph.
    """
    _check_platform(config, source)
    done = mc.ModelConfig()
    done.CopyFrom(config)
    done.platform = done.platform or PLATFORM
    done.backend = done.backend or BACKEND
    inputs = [_as_tensor(t) for t in onnx_inputs]
    outputs = [_as_tensor(t) for t in onnx_outputs]
    model_batches = all(_is_batch_dim(t.shape) for t in (*inputs, *outputs)) and bool(inputs)
    if done.max_batch_size == 0 and not done.input and model_batches:
        # Nothing said about batching: a graph whose every tensor has a variable first dim batches.
        done.max_batch_size = default_max_batch_size
    if done.max_batch_size == 0 and done.HasField("dynamic_batching"):
        raise ConfigError(
            f"{source}: dynamic_batching needs max_batch_size > 0 (none is set, and the ONNX model "
            "does not have a variable first (batch) dimension on every input and output)"
        )
    _complete_tensors("input", done.input, inputs, done.max_batch_size, source)
    _complete_tensors("output", done.output, outputs, done.max_batch_size, source)
    return done


# --- batching policy ------------------------------------------------------------------------------


def dynamic_batching_enabled(config: mc.ModelConfig) -> bool:
    """Whether requests may share a batch; without it each request runs alone (any number of rows)."""
    return config.max_batch_size > 0 and config.HasField("dynamic_batching")


def _idle_dispatch(config: mc.ModelConfig, source: str, *, default: bool) -> bool:
    if IDLE_DISPATCH not in config.parameters:
        return default
    value = config.parameters[IDLE_DISPATCH].string_value
    if value.lower() not in _BOOLEANS:
        raise ConfigError(f"{source}: parameters '{IDLE_DISPATCH}' must be 'true' or 'false', got '{value}'")
    return _BOOLEANS[value.lower()]


def batching_policy(
    config: mc.ModelConfig,
    *,
    default_max_queue_size: int,
    max_batches_in_flight: int,
    idle_dispatch: bool = False,
) -> BatchingPolicy:
    """The batcher's policy for a completed, validated config. The queue is always bounded.

    `idle_dispatch` is the server's default; the model's `idle_dispatch` parameter overrides it."""
    if not dynamic_batching_enabled(config):
        return BatchingPolicy(
            max_batch_size=config.max_batch_size,
            preferred_batch_sizes=(),
            max_queue_delay_s=0.0,
            max_queue_size=default_max_queue_size,
            max_batches_in_flight=max_batches_in_flight,
        )
    db = config.dynamic_batching
    queue = db.default_queue_policy
    action = (
        TimeoutAction.DELAY if queue.timeout_action == mc.ModelQueuePolicy.DELAY else TimeoutAction.REJECT
    )
    # Triton: with a default timeout, a request's `timeout` counts only with allow_timeout_override
    # (false unless set). Without one there is nothing to override and the request's `timeout`
    # counts, as for a model without a queue policy (proto3 cannot tell an unset bool from false).
    allow_override = queue.allow_timeout_override or queue.default_timeout_microseconds == 0
    return BatchingPolicy(
        max_batch_size=config.max_batch_size,
        preferred_batch_sizes=tuple(sorted(set(db.preferred_batch_size))),
        max_queue_delay_s=db.max_queue_delay_microseconds / 1e6,
        idle_dispatch=_idle_dispatch(config, f"model '{config.name}'", default=idle_dispatch),
        max_queue_size=queue.max_queue_size or default_max_queue_size,
        priority_levels=db.priority_levels or 1,
        default_priority=db.default_priority_level or 1,
        default_timeout_s=(queue.default_timeout_microseconds / 1e6) or None,
        timeout_action=action,
        allow_timeout_override=allow_override,
        max_batches_in_flight=max_batches_in_flight,
    )
