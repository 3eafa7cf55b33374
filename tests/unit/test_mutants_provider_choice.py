"""providers_for (server/backends/provider_choice.py): the error a bad tensorrt parameter raises names
the model, and Triton's deprecated CUDA parameters reach the CUDA provider."""

from __future__ import annotations

import pytest
from google.protobuf import text_format

from protos import model_config_pb2 as mc
from server.backends.onnxruntime_backend import CPU, CUDA, TENSORRT
from server.backends.provider_choice import providers_for
from server.models.config import ConfigError

GPU = 'name: "resnet" max_batch_size: 8 instance_group [ { kind: KIND_GPU gpus: [ 2 ] } ]\n'


def config(text: str) -> mc.ModelConfig:
    parsed: mc.ModelConfig = text_format.Parse(GPU + text, mc.ModelConfig())
    return parsed


def trt(params: str) -> str:
    return (
        "optimization { execution_accelerators { gpu_execution_accelerator [ "
        f'{{ name: "tensorrt" {params} }} ] }} }}'
    )


def test_a_bad_tensorrt_parameter_names_the_model() -> None:
    """The ConfigError for an unsupported tensorrt key is prefixed with the model's name."""
    cfg = config(trt('parameters { key: "no_such_key" value: "1" }'))
    with pytest.raises(ConfigError) as caught:
        providers_for(cfg, [CPU])
    assert (
        str(caught.value) == "model 'resnet': tensorrt accelerator parameter 'no_such_key' is not supported"
    )


def test_a_bad_tensorrt_value_names_the_model() -> None:
    """The ConfigError for a bad tensorrt precision names the model too."""
    cfg = config(trt('parameters { key: "precision_mode" value: "FP8" }'))
    with pytest.raises(ConfigError) as caught:
        providers_for(cfg, [CPU])
    assert str(caught.value) == (
        "model 'resnet': tensorrt precision_mode 'FP8' is not one of ['BF16', 'FP16', 'FP32', 'INT8']"
    )


def test_deprecated_cuda_parameters_reach_tensorrts_cuda_provider() -> None:
    """A config's gpu_mem_limit parameter goes to the CUDA provider behind TensorRT, on the group's GPU."""
    cfg = config('parameters { key: "gpu_mem_limit" value: { string_value: "4096" } }\n' + trt(""))
    assert providers_for(cfg, [CPU]) == [
        (TENSORRT, {"device_id": "2"}),
        (CUDA, {"device_id": "2", "gpu_mem_limit": "4096"}),
        (CPU, {}),
    ]
