"""The onnxruntime backend's config keys, checked and mapped as Triton's onnxruntime backend does.

Model `parameters` (string values): thread counts and execution mode, the memory settings
(`enable_mem_arena`, `enable_mem_pattern`, `memory.enable_memory_arena_shrinkage`,
`session.use_device_allocator_for_initializers`), `share_session_between_instances`, and the
deprecated CUDA keys (`cudnn_conv_algo_search`, `gpu_mem_limit`, `arena_extend_strategy`,
`do_copy_in_default_stream`). TensorRT accelerator parameters are checked key by key with Triton's
types. A bad value is a ConfigError naming the key; a key that cannot apply here (CUDA without a
GPU, a shared session) is listed for the model's one load warning.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from protos import model_config_pb2 as mc
from server.backends.batch_padding import SHRINK_AFTER, Padding
from server.models.config_errors import ConfigError
from server.whole_numbers import whole_number

# Accelerator names as Triton's onnxruntime backend spells them.
GPU_ACCELERATORS = frozenset({"tensorrt", "cuda"})
CPU_ACCELERATORS = frozenset({"openvino"})
_TRUE, _FALSE = ("true", "1", "on"), ("false", "0", "off")
_SHRINK = re.compile(r"^(cpu|gpu):\d+(;(cpu|gpu):\d+)*$")


def parse_bool(value: str) -> bool | None:
    """Triton's ParseBoolValue: true/1/on, false/0/off (any case); None for anything else."""
    low = value.strip().lower()
    return True if low in _TRUE else False if low in _FALSE else None


def _is_bool(value: str) -> bool:
    return parse_bool(value) is not None


def _is_count(value: str) -> bool:
    """An unsigned 64-bit count (Triton's backend reads these as unsigned long long)."""
    return whole_number(value, 2**64 - 1) is not None


MAX_THREADS = 256  # per session: a count can come from a client's RepositoryModelLoad config


def _is_thread_count(value: str) -> bool:
    # 2000 in a client's config started 2,000 threads; 100000 never finished loading.
    return whole_number(value, MAX_THREADS) is not None


MAX_SHRINK_AFTER = 1_000_000


def _is_shrink_count(value: str) -> bool:
    return (whole_number(value, MAX_SHRINK_AFTER) or 0) >= 1


def _one_of(*allowed: str) -> Callable[[str], bool]:
    return lambda value: value.strip() in allowed


def _any(value: str) -> bool:
    return True


# Model parameter -> (check, what a good value is). Keys the backend turns into settings below.
ORT_PARAMETERS: dict[str, tuple[Callable[[str], bool], str]] = {
    "intra_op_thread_count": (_is_thread_count, f"a count from 0 to {MAX_THREADS} (at most {MAX_THREADS})"),
    "inter_op_thread_count": (_is_thread_count, f"a count from 0 to {MAX_THREADS} (at most {MAX_THREADS})"),
    "execution_mode": (_one_of("0", "1"), "0 (sequential) or 1 (parallel)"),
    "enable_mem_arena": (_is_bool, "a boolean (1/0, true/false)"),
    "enable_mem_pattern": (_is_bool, "a boolean (1/0, true/false)"),
    "memory.enable_memory_arena_shrinkage": (
        lambda v: _SHRINK.match(v) is not None,
        "device:id pairs separated by ';', e.g. 'cpu:0' or 'cpu:0;gpu:0'",
    ),
    "session.use_device_allocator_for_initializers": (_one_of("0", "1"), "0 or 1"),
    "share_session_between_instances": (_is_bool, "a boolean (1/0, true/false)"),
    "cudnn_conv_algo_search": (_one_of("0", "1", "2"), "0 (exhaustive), 1 (heuristic) or 2 (default)"),
    "gpu_mem_limit": (_is_count, "bytes, an unsigned integer"),
    "arena_extend_strategy": (_one_of("0", "1"), "0 (next power of two) or 1 (same as requested)"),
    "do_copy_in_default_stream": (_one_of("0", "1"), "0 or 1"),
    # Sluiceway's: batches through IO binding (server/backends/io_binding.py); unset: on GPUs only.
    "io_binding": (_is_bool, "a boolean (1/0, true/false)"),
    # Sluiceway's: dynamic INT8 quantized per row (server/backends/row_quantization.py) or, as the
    # model has it, per batch; unset: per row where requests are batched together.
    "dynamic_quantization": (_one_of("per_row", "per_batch"), "per_row or per_batch"),
    # Sluiceway's: CUDA instances pad batches to a steady size (server/backends/batch_padding.py).
    "gpu_batch_padding": (
        lambda v: v.strip().lower() == "auto" or _is_bool(v),
        "auto (the default: models with a convolution), true or false",
    ),
    "gpu_batch_padding_shrink_after": (_is_shrink_count, f"a count of batches from 1 to {MAX_SHRINK_AFTER}"),
}
CUDA_PARAMETERS = (
    "cudnn_conv_algo_search",
    "gpu_mem_limit",
    "arena_extend_strategy",
    "do_copy_in_default_stream",
)


PADDING_KEYS = ("gpu_batch_padding", "gpu_batch_padding_shrink_after")


def paddable(config: mc.ModelConfig) -> bool:
    """Whether a batch's rows may be padded (batch_padding.py): dynamic batching (so not a sequence
    model: the two are one `oneof`), no ragged inputs or batch inputs/outputs (the first dimension
    is not rows there)."""
    ragged = any(i.allow_ragged_batch for i in config.input)
    plain_rows = not (config.batch_input or config.batch_output or ragged)
    return config.max_batch_size > 1 and config.HasField("dynamic_batching") and plain_rows


@dataclass(frozen=True)
class BackendParameters:
    """What a config's backend parameters change: OrtOptions fields, session attributes and
    config entries, run config entries, CUDA provider options, and what does not apply here."""

    options: dict[str, Any] = field(default_factory=dict)
    session_attrs: tuple[tuple[str, bool], ...] = ()
    session_entries: tuple[tuple[str, str], ...] = ()
    run_entries: tuple[tuple[str, str], ...] = ()
    cuda: dict[str, str] = field(default_factory=dict)
    unapplied: tuple[str, ...] = ()


def _value(config: mc.ModelConfig, key: str) -> str | None:
    if key not in config.parameters:
        return None
    value: str = config.parameters[key].string_value
    check, good = ORT_PARAMETERS[key]
    if not check(value):
        raise ConfigError(f"model '{config.name}': parameters '{key}' value '{shown(value)}' is not {good}")
    return value.strip()


def backend_parameters(config: mc.ModelConfig, *, has_gpu: bool) -> BackendParameters:
    """Check every onnxruntime backend key the config sets, and say what each changes."""
    values = {key: v for key in ORT_PARAMETERS if (v := _value(config, key)) is not None}
    options: dict[str, Any] = {}
    for key, name in (
        ("intra_op_thread_count", "intra_op_threads"),
        ("inter_op_thread_count", "inter_op_threads"),
    ):
        if key in values:
            options[name] = int(values[key])
    if "io_binding" in values:
        options["io_binding"] = parse_bool(values["io_binding"])
    batches_requests = config.max_batch_size > 0 and (
        config.HasField("dynamic_batching") or config.HasField("sequence_batching")
    )
    if values.get("dynamic_quantization", "per_row") == "per_row" and batches_requests:
        options["row_quantization"] = True
    if batches_requests:  # each Reshape checked as written, as the row-mixing reading takes it
        options["checked_reshapes"] = True
    if "execution_mode" in values:
        options["execution_mode"] = "parallel" if values["execution_mode"] == "1" else "sequential"
    choice = values.get("gpu_batch_padding", "auto").lower()
    if (choice == "auto" or parse_bool(choice)) and paddable(config):
        after = int(values.get("gpu_batch_padding_shrink_after", str(SHRINK_AFTER)))
        options["padding"] = Padding(config.max_batch_size, after, convolutions_only=choice == "auto")
    attrs = tuple(
        (attr, bool(parse_bool(values[key])))
        for key, attr in (
            ("enable_mem_arena", "enable_cpu_mem_arena"),
            ("enable_mem_pattern", "enable_mem_pattern"),
        )
        if key in values
    )
    entries: tuple[tuple[str, str], ...] = ()
    if "session.use_device_allocator_for_initializers" in values:
        key = "session.use_device_allocator_for_initializers"
        entries = ((key, values[key]),)
    unapplied: list[str] = []
    run: tuple[tuple[str, str], ...] = ()
    shrink = values.get("memory.enable_memory_arena_shrinkage")
    if shrink is not None:
        devices = shrink.split(";")
        kept = [d for d in devices if has_gpu or d.startswith("cpu:")]
        if len(kept) < len(devices):
            unapplied.append("parameters 'memory.enable_memory_arena_shrinkage' gpu entries (no GPU)")
        if kept:
            run = (("memory.enable_memory_arena_shrinkage", ";".join(kept)),)
    padding_keys = sorted(k for k in PADDING_KEYS if k in values)
    if padding_keys and not (has_gpu and paddable(config)):
        why = "no GPU" if not has_gpu else "no dynamic batching of plain rows"
        unapplied.append(f"parameters {padding_keys} (padding a GPU instance's batches; {why})")
    cuda = {key: values[key] for key in CUDA_PARAMETERS if key in values}
    if cuda and not has_gpu:
        unapplied.append(f"parameters {sorted(cuda)} (CUDA settings; no GPU)")
    if parse_bool(values.get("share_session_between_instances", "0")):
        unapplied.append("parameters 'share_session_between_instances' (each instance has its own session)")
    return BackendParameters(options, attrs, entries, run, cuda, tuple(unapplied))


_TRT_BOOL = [
    "int8_use_native_calibration_table",
    "trt_dla_enable",
    "trt_engine_cache_enable",
    "trt_dump_subgraphs",
    "trt_force_sequential_engine_build",
    "trt_context_memory_sharing_enable",
    "trt_layer_norm_fp32_fallback",
    "trt_timing_cache_enable",
    "trt_force_timing_cache",
    "trt_detailed_build_log",
    "trt_build_heuristics_enable",
    "trt_sparsity_enable",
    "trt_cuda_graph_enable",
    "trt_dump_ep_context_model",
]
# TensorRT's integer keys and the values onnxruntime documents for them. A config can come from a
# client (RepositoryModelLoad's `config`): partition iterations or auxiliary streams were unbounded.
_TRT_INT: dict[str, tuple[int, int]] = {
    "trt_max_partition_iterations": (1, 100_000),  # default 1000
    "trt_min_subgraph_size": (1, 1_000_000),  # nodes; default 1
    "trt_dla_core": (0, 15),
    "trt_builder_optimization_level": (0, 5),  # default 3
    "trt_auxiliary_streams": (-1, 64),  # -1: TensorRT's heuristics
    "trt_ep_context_embed_mode": (0, 1),
}
SHOWN_CHARS = 100  # of a bad value, in an error: a long one is cut, its length said


def _int_in(low: int, high: int) -> Callable[[str], bool]:
    """A check for an ASCII integer from `low` to `high` (a sign allowed)."""

    def check(value: str) -> bool:
        text = value.strip()
        sign = -1 if text.startswith("-") else 1
        number = whole_number(text[1:] if text[:1] in "+-" and text else text, max(-low, high))
        return number is not None and low <= sign * number <= high

    return check


def shown(value: str) -> str:
    """`value` for an error message: cut past SHOWN_CHARS, its length then said."""
    return value if len(value) <= SHOWN_CHARS else f"{value[:SHOWN_CHARS]}... ({len(value)} characters)"


_TRT_STRING = [
    "int8_calibration_table_name",
    "trt_engine_cache_path",
    "trt_engine_cache_prefix",
    "trt_timing_cache_path",
    "trt_tactic_sources",
    "trt_extra_plugin_lib_paths",
    "trt_profile_min_shapes",
    "trt_profile_max_shapes",
    "trt_profile_opt_shapes",
    "trt_ep_context_file_path",
]
# Triton's names that onnxruntime spells differently (older configs' names included).
_TRT_RENAMES = {
    "max_workspace_size_bytes": "trt_max_workspace_size",
    "int8_calibration_table_name": "trt_int8_calibration_table_name",
    "int8_use_native_calibration_table": "trt_int8_use_native_calibration_table",
    "max_partition_iterations": "trt_max_partition_iterations",
    "minimum_segment_size": "trt_min_subgraph_size",
    "min_subgraph_size": "trt_min_subgraph_size",
}
_PRECISIONS = {
    "FP32": {},
    "FP16": {"trt_fp16_enable": "1"},
    "BF16": {"trt_bf16_enable": "1"},
    "INT8": {"trt_int8_enable": "1"},
}


def _trt_check(key: str) -> tuple[Callable[[str], bool], str] | None:
    if key in _TRT_BOOL:
        return _is_bool, "a boolean (1/0, true/false)"
    bounds = _TRT_INT.get(_TRT_RENAMES.get(key, key))
    if bounds is not None:
        return _int_in(*bounds), f"an integer from {bounds[0]} to {bounds[1]}"
    if key == "max_workspace_size_bytes":
        return _is_count, "bytes, an unsigned integer"
    if key in _TRT_STRING:
        return _any, ""
    return None


def tensorrt_options(params: Mapping[str, str], where: str) -> dict[str, str]:
    """onnxruntime TensorRT provider options from Triton's tensorrt accelerator parameters;
    `where` (the config file, or the model) prefixes errors."""
    options: dict[str, str] = {}
    for key, value in params.items():
        if key == "precision_mode":
            if value not in _PRECISIONS:
                raise ConfigError(
                    f"{where}: tensorrt precision_mode '{value}' is not one of {sorted(_PRECISIONS)}"
                )
            options.update(_PRECISIONS[value])
            continue
        checked = _trt_check(key)
        if checked is None:
            raise ConfigError(f"{where}: tensorrt accelerator parameter '{key}' is not supported")
        check, good = checked
        if not check(value):
            raise ConfigError(
                f"{where}: tensorrt accelerator parameter '{key}' value '{shown(value)}' is not {good}"
            )
        options[_TRT_RENAMES.get(key, key)] = value
    return options


# Instances of one model, all groups together. Each is a session with its own memory and threads,
# and a count can come from a client (RepositoryModelLoad's `config`): a count of 1,000,000 grew the
# server by ~110 MB/s until the call's deadline. Triton sets none; 16 per GPU on 8 GPUs is 128.
MAX_INSTANCES = 256
# Triton's count for a group that leaves it out (SetDefaultInstanceCount, model_config_utils.cc):
# 2 for a KIND_CPU group of the onnxruntime backend (KIND_AUTO once it resolves to the CPU), else 1.
ONNXRUNTIME_CPU_INSTANCES = 2


def default_instance_count(config: mc.ModelConfig, *, on_cpu: bool) -> int:
    """The instances a group without `count` gets (per GPU for a GPU group), as Triton's: the
    onnxruntime backend's CPU groups 2, every other group 1 (the identity backend's CPU ones too)."""
    onnxruntime = config.backend in ("", "onnxruntime")
    return ONNXRUNTIME_CPU_INSTANCES if on_cpu and onnxruntime else 1


def validate_instance_groups(config: mc.ModelConfig, source: str) -> None:
    """Kinds, counts and device ids of the instance groups, and their total."""
    total = 0
    for i, group in enumerate(config.instance_group):
        on_cpu = group.kind == mc.ModelInstanceGroup.KIND_CPU
        count = group.count or default_instance_count(config, on_cpu=on_cpu)
        total += max(count, 1) * max(len(group.gpus), 1)
        where = f"{source}: instance_group[{i}]"
        if group.kind not in mc.ModelInstanceGroup.Kind.values():  # proto3 keeps a number it lacks
            raise ConfigError(f"{where}: kind {group.kind} is not a kind (KIND_AUTO, KIND_GPU or KIND_CPU)")
        if group.kind == mc.ModelInstanceGroup.KIND_MODEL:
            raise ConfigError(f"{where}: kind KIND_MODEL is not supported (use KIND_CPU or KIND_GPU)")
        if group.count < 0:
            raise ConfigError(f"{where}: count {group.count} is negative")
        if group.gpus and group.kind == mc.ModelInstanceGroup.KIND_CPU:
            raise ConfigError(f"{where}: gpus {list(group.gpus)} given for kind KIND_CPU")
        if any(g < 0 for g in group.gpus):
            raise ConfigError(f"{where}: gpus {list(group.gpus)} has a negative device id")
    if total > MAX_INSTANCES:
        raise ConfigError(
            f"{source}: instance_group asks for {total} instances (count x gpus, all groups); at most "
            f"{MAX_INSTANCES} per model"
        )


def validate_optimization(config: mc.ModelConfig, source: str) -> None:
    """Graph level, priority and execution accelerators (TensorRT values checked as Triton)."""
    opt = config.optimization
    if opt.graph.level not in (-1, 0, 1, 2):
        raise ConfigError(f"{source}: optimization.graph.level {opt.graph.level} is not -1, 0, 1 or 2")
    if opt.priority != mc.ModelOptimizationPolicy.PRIORITY_DEFAULT:
        raise ConfigError(f"{source}: optimization.priority is not supported")
    accel = opt.execution_accelerators
    for kind, known in (
        ("gpu_execution_accelerator", GPU_ACCELERATORS),
        ("cpu_execution_accelerator", CPU_ACCELERATORS),
    ):
        for entry in getattr(accel, kind):
            if entry.name not in known:
                raise ConfigError(
                    f"{source}: optimization.execution_accelerators.{kind} '{entry.name}' "
                    f"is not supported (known: {sorted(known)})"
                )
            if entry.name == "tensorrt":  # values checked as Triton does
                tensorrt_options(dict(entry.parameters), source)
    # A GPU accelerator with only KIND_CPU groups loads, as in Triton: it applies to GPU instances
    # only, and the load warning says it is unused (server/backends/instance_groups.py).


# A tag becomes the Prometheus label `_<key>` (Triton's form), so the key must make a label name,
# and not one starting `__` (reserved by Prometheus: `_name__` made `__name__`, and the page's
# parsers refused the whole page).
_TAG_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_]*")


def validate_metric_tags(config: mc.ModelConfig, source: str) -> None:
    """metric_tags become labels `_<key>` on the model's metrics (observability/metrics_views.py)."""
    for key in sorted(config.metric_tags):
        if not _TAG_KEY.fullmatch(key):
            raise ConfigError(
                f"{source}: metric_tags key '{key[:64]}' cannot be a Prometheus label "
                "(letters, digits and '_' only, not first: it becomes the label '_<key>', and labels "
                "starting '__' are Prometheus's own)"
            )
