"""The `cuda` gpu_execution_accelerator's parameters: checked at config check, as the `tensorrt` ones
are (config_backend.py), and written as onnxruntime's CUDAExecutionProvider takes them.

Triton's onnxruntime backend hands these keys to onnxruntime's CUDA provider as they are, so an
unknown key or a bad value only failed when a GPU instance started its session, and on a machine
without a GPU it was never seen. Here they are refused at load, wherever the model runs, naming
the parameter, the value and what is allowed. Accepted values are written in onnxruntime's form:
enum names for the two enums (Triton's deprecated model parameters give their numbers), "1"/"0"
for booleans (Triton's true/on/... spellings). Values the server sets itself are refused: the
device (instance_group's `gpus`) and the stream and allocator pointers (addresses in its process).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from protos import model_config_pb2 as mc
from server.models.config_backend import parse_bool
from server.models.config_errors import ConfigError
from server.whole_numbers import whole_number

_SIZE_MAX = 2**64 - 1
_INT_MAX = 2**31 - 1
_ALGO_SEARCH = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")  # by Triton's numbers 0, 1, 2
_ARENA_EXTEND = ("kNextPowerOfTwo", "kSameAsRequested")  # by Triton's numbers 0, 1


@dataclass(frozen=True)
class Rule:
    """What one parameter accepts (`good` for the error) and its value in onnxruntime's form."""

    good: str
    to_ort: Callable[[str], str | None]  # None: not a value this parameter takes


def _bool(value: str) -> str | None:
    parsed = parse_bool(value)  # Triton's ParseBoolValue: true/1/on, false/0/off, any case
    return None if parsed is None else "1" if parsed else "0"


def _count(limit: int) -> Callable[[str], str | None]:
    def parse(value: str) -> str | None:
        number = whole_number(value, limit)  # ASCII digits, bounded: "²" had crashed the start
        return None if number is None else str(number)

    return parse


def _enum(names: tuple[str, ...]) -> Callable[[str], str | None]:
    def parse(value: str) -> str | None:
        text = value.strip()
        index = whole_number(text, len(names) - 1)
        if index is not None:
            return names[index]
        return text if text in names else None  # onnxruntime's names are case-sensitive

    return parse


_BOOLEAN = Rule("a boolean (1/0, true/false, on/off)", _bool)
RULES: dict[str, Rule] = {
    "cudnn_conv_algo_search": Rule(
        "EXHAUSTIVE, HEURISTIC or DEFAULT (or Triton's 0, 1, 2)", _enum(_ALGO_SEARCH)
    ),
    "gpu_mem_limit": Rule(f"bytes, an unsigned integer up to {_SIZE_MAX}", _count(_SIZE_MAX)),
    "arena_extend_strategy": Rule(
        "kNextPowerOfTwo or kSameAsRequested (or Triton's 0, 1)", _enum(_ARENA_EXTEND)
    ),
    "do_copy_in_default_stream": _BOOLEAN,
    "use_ep_level_unified_stream": _BOOLEAN,
    "cudnn_conv_use_max_workspace": _BOOLEAN,
    "cudnn_conv1d_pad_to_nc1d": _BOOLEAN,
    "enable_cuda_graph": _BOOLEAN,
    "enable_skip_layer_norm_strict_mode": _BOOLEAN,
    "prefer_nhwc": _BOOLEAN,
    "use_tf32": _BOOLEAN,
    "fuse_conv_bias": _BOOLEAN,
    "tunable_op_enable": _BOOLEAN,
    "tunable_op_tuning_enable": _BOOLEAN,
    "tunable_op_max_tuning_duration_ms": Rule(f"milliseconds, an integer 0 to {_INT_MAX}", _count(_INT_MAX)),
    "sdpa_kernel": Rule(f"an integer 0 to {_INT_MAX} (onnxruntime's kernel flags)", _count(_INT_MAX)),
}
# The provider's own options that a config must not set, and why.
SERVER_SET = {
    "device_id": "the device is the instance_group's `gpus`",
    "has_user_compute_stream": "the server's own stream setting",
    "user_compute_stream": "an address in the server's process",
    "gpu_external_alloc": "an address in the server's process",
    "gpu_external_free": "an address in the server's process",
    "gpu_external_empty_cache": "an address in the server's process",
}


def cuda_options(params: Mapping[str, str], where: str) -> dict[str, str]:
    """onnxruntime CUDA provider options from a `cuda` accelerator's parameters; ConfigError (prefixed
    with `where`) for a key onnxruntime's CUDA provider does not take here or a value it would refuse."""
    options: dict[str, str] = {}
    for key, value in params.items():
        if key in SERVER_SET:
            raise ConfigError(
                f"{where}: cuda accelerator parameter '{key}' cannot be set ({SERVER_SET[key]})"
            )
        rule = RULES.get(key)
        if rule is None:
            raise ConfigError(
                f"{where}: cuda accelerator parameter '{key[:100]}' is not supported (known: {sorted(RULES)})"
            )
        ort = rule.to_ort(value)
        if ort is None:
            raise ConfigError(
                f"{where}: cuda accelerator parameter '{key}' value '{value[:100]}' is not {rule.good}"
            )
        options[key] = ort
    return options


def ort_cuda_values(options: Mapping[str, str]) -> dict[str, str]:
    """`options` (a CUDA provider entry) with the values of known keys in onnxruntime's form; other
    keys and values unchanged (they were checked where they came from)."""
    out: dict[str, str] = {}
    for key, value in options.items():
        rule = RULES.get(key)
        ort = None if rule is None else rule.to_ort(value)
        out[key] = value if ort is None else ort
    return out


def validate_cuda_accelerators(config: mc.ModelConfig, source: str) -> None:
    """Every `cuda` gpu_execution_accelerator's parameters, checked (the refusal needs no GPU)."""
    for entry in config.optimization.execution_accelerators.gpu_execution_accelerator:
        if entry.name == "cuda":
            cuda_options(dict(entry.parameters), source)
