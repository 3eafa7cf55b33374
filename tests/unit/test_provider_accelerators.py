"""`tensorrt` and `cuda` gpu_execution_accelerators listed together (server/backends/provider_choice.py):
TensorRT first, then one CUDA provider holding every `cuda` entry's parameters, whichever order the
entries come in. Found by a tester: with `tensorrt` first, the `cuda` entry's `use_tf32: "0"` was
dropped (TF32 stayed on, though the README names that parameter to turn it off); with `cuda` first,
CUDA came before TensorRT, which would then get no nodes."""

from __future__ import annotations

import pytest
from google.protobuf import text_format

from protos import model_config_pb2 as mc
from server.backends.onnxruntime_backend import CPU, CUDA, TENSORRT
from server.backends.provider_choice import providers_for

BASE = 'name: "m" max_batch_size: 8 instance_group [ { kind: KIND_GPU gpus: [ 1 ] } ]\n'
TRT = '{ name: "tensorrt" parameters { key: "precision_mode" value: "FP16" } }'
CUDA_TF32_OFF = '{ name: "cuda" parameters { key: "use_tf32" value: "0" } }'
CUDA_LIMIT = '{ name: "cuda" parameters { key: "gpu_mem_limit" value: "1024" } }'


def providers(*entries: str) -> list[tuple[str, dict[str, str]]]:
    accel = (
        f"optimization {{ execution_accelerators {{ gpu_execution_accelerator [ {', '.join(entries)} ] }} }}"
    )
    config = text_format.Parse(BASE + accel, mc.ModelConfig())
    return providers_for(config, [CPU], gpu_instance=True)


@pytest.mark.parametrize("order", [(TRT, CUDA_TF32_OFF), (CUDA_TF32_OFF, TRT)])
def test_tensorrt_comes_first_and_cuda_keeps_its_parameters(order: tuple[str, str]) -> None:
    got = providers(*order)
    assert [name for name, _ in got] == [TENSORRT, CUDA, CPU]
    assert got[0][1] == {"device_id": "1", "trt_fp16_enable": "1"}
    assert got[1][1] == {"device_id": "1", "use_tf32": "0"}


def test_every_cuda_entry_is_merged_into_one_provider() -> None:
    got = providers(CUDA_TF32_OFF, CUDA_LIMIT)
    assert got == [(CUDA, {"device_id": "1", "use_tf32": "0", "gpu_mem_limit": "1024"}), (CPU, {})]


def test_tensorrt_alone_falls_back_to_a_plain_cuda_provider() -> None:
    assert [name for name, _ in providers(TRT)] == [TENSORRT, CUDA, CPU]
    assert providers(TRT)[1][1] == {"device_id": "1"}
