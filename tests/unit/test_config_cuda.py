"""The `cuda` gpu_execution_accelerator's parameters (server/models/config_cuda.py): refused at config
check like the `tensorrt` ones, on any machine, and written in the form onnxruntime's
CUDAExecutionProvider takes (also for Triton's deprecated model parameters)."""

from __future__ import annotations

import pytest

from protos import model_config_pb2 as mc
from server.backends.onnxruntime_backend import CPU, CUDA
from server.backends.provider_choice import providers_for
from server.backends.tensorrt_options import gpu_provider_options
from server.models.config import ConfigError, parse_config, validate_config
from server.models.config_cuda import RULES, cuda_options, ort_cuda_values


def _cuda(*params: tuple[str, str], extra: str = "") -> mc.ModelConfig:
    keys = " ".join(f'parameters {{ key: "{k}" value: "{v}" }}' for k, v in params)
    text = (
        'name: "m"\ninstance_group [ { kind: KIND_GPU } ]\n'
        "optimization { execution_accelerators { gpu_execution_accelerator [ "
        f'{{ name: "cuda" {keys} }} ] }} }}\n'
        f"{extra}"
    )
    return parse_config(text, "models/m/config.pbtxt")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("do_copy_in_default_stream", "maybe", "'do_copy_in_default_stream' value 'maybe' is not a boolean"),
        ("use_ep_level_unified_stream", "2", "'use_ep_level_unified_stream' value '2' is not a boolean"),
        ("cudnn_conv_algo_search", "FASTEST", "'FASTEST' is not EXHAUSTIVE, HEURISTIC or DEFAULT"),
        ("cudnn_conv_algo_search", "heuristic", "'heuristic' is not EXHAUSTIVE"),  # onnxruntime's case
        ("cudnn_conv_algo_search", "3", "value '3' is not EXHAUSTIVE"),
        ("arena_extend_strategy", "2", "value '2' is not kNextPowerOfTwo or kSameAsRequested"),
        ("gpu_mem_limit", "4GB", "'gpu_mem_limit' value '4GB' is not bytes, an unsigned integer"),
        ("gpu_mem_limit", "-1", "value '-1' is not bytes"),
        ("gpu_mem_limit", str(2**64), f"value '{2**64}' is not bytes"),
        ("tunable_op_max_tuning_duration_ms", "soon", "is not milliseconds"),
        ("no_such_cuda_option", "1", "'no_such_cuda_option' is not supported \\(known: \\["),
        ("device_id", "1", "'device_id' cannot be set \\(the device is the instance_group's `gpus`\\)"),
        ("user_compute_stream", "140000", "'user_compute_stream' cannot be set \\(an address"),
    ],
)
def test_cuda_values_are_refused_at_config_check_naming_key_value_and_what_is_allowed(
    key: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=f"^src: cuda accelerator parameter .*{message}"):
        validate_config(_cuda((key, value)), "src")


def test_good_cuda_values_pass_and_are_written_as_onnxruntime_takes_them() -> None:
    params = {
        "cudnn_conv_algo_search": "1",
        "arena_extend_strategy": "kSameAsRequested",
        "gpu_mem_limit": "4294967296",
        "do_copy_in_default_stream": "off",
        "use_ep_level_unified_stream": "TRUE",
        "cudnn_conv_use_max_workspace": "0",
        "enable_cuda_graph": "on",
        "tunable_op_max_tuning_duration_ms": "50",
    }
    validate_config(_cuda(*params.items()), "src")
    assert cuda_options(params, "m") == {
        "cudnn_conv_algo_search": "HEURISTIC",
        "arena_extend_strategy": "kSameAsRequested",
        "gpu_mem_limit": "4294967296",
        "do_copy_in_default_stream": "0",
        "use_ep_level_unified_stream": "1",
        "cudnn_conv_use_max_workspace": "0",
        "enable_cuda_graph": "1",
        "tunable_op_max_tuning_duration_ms": "50",
    }
    # Unknown keys (the server's own defaults) pass through the mapping unchanged.
    assert ort_cuda_values({"device_id": "3", "arena_extend_strategy": "0"}) == {
        "device_id": "3",
        "arena_extend_strategy": "kNextPowerOfTwo",
    }
    assert "use_ep_level_unified_stream" in RULES and "cudnn_conv_use_max_workspace" in RULES


def test_the_cuda_provider_gets_onnxruntime_values_from_the_accelerator_and_deprecated_keys() -> None:
    # Triton's deprecated model parameters give numbers (cudnn_conv_algo_search 0: EXHAUSTIVE);
    # onnxruntime's CUDA provider takes only the names. The accelerator's own keys win.
    deprecated = (
        'parameters { key: "cudnn_conv_algo_search" value: { string_value: "0" } }\n'
        'parameters { key: "arena_extend_strategy" value: { string_value: "1" } }\n'
    )
    cfg = _cuda(("do_copy_in_default_stream", "true"), ("cudnn_conv_algo_search", "2"), extra=deprecated)
    validate_config(cfg, "src")
    options = dict(gpu_provider_options(cfg, providers_for(cfg, [CPU]), engine_cache=None))
    assert options[CUDA] == {
        "device_id": "0",
        "cudnn_conv_algo_search": "DEFAULT",
        "arena_extend_strategy": "kSameAsRequested",
        "do_copy_in_default_stream": "1",
    }
