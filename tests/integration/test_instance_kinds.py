"""Instance kinds as Triton serves them, over a real server and tritonclient: KIND_AUTO resolved
at load, a GPU group shown as where its instances run (KIND_CPU without a GPU), and a GPU
accelerator beside KIND_CPU groups only loaded, unused, with one warning line. On a machine with
visible GPUs the same tests expect Triton's GPU placement (`count` on every visible GPU)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton

from server.backends.gpu_devices import visible_gpus
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess

IO = """
max_batch_size: 8
input [ { name: "features" data_type: TYPE_FP32 dims: [ 64 ] } ]
output [ { name: "scores" data_type: TYPE_FP32 dims: [ 2 ] } ]
"""
TRT = 'optimization { execution_accelerators { gpu_execution_accelerator [ { name: "tensorrt" } ] } }'
CONFIGS = {
    "auto_kind": IO + "instance_group [ { count: 2 kind: KIND_AUTO } ]",
    "gpu_kind": IO + "instance_group [ { count: 2 kind: KIND_GPU } ]",
    "cpu_trt": IO + 'instance_group [ { name: "c" count: 2 kind: KIND_CPU } ]\n' + TRT,
}
GPUS = visible_gpus(ort.get_available_providers())


@pytest.fixture(scope="module")
def server(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("kinds")
    for name, config in CONFIGS.items():
        write_model(repo, name, demo_repo / "mlp" / "1" / "model.onnx", config)
    with ServerProcess("--model-repository", str(repo)) as process:
        yield process


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(server.address) as tc:
        yield tc


def _groups(client: triton.InferenceServerClient, name: str) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = client.get_model_config(name, as_json=True)["config"]["instance_group"]
    return groups


def _infers(client: triton.InferenceServerClient, name: str) -> None:
    features = triton.InferInput("features", [3, 64], "FP32")
    features.set_data_from_numpy(np.ones((3, 64), np.float32))
    assert client.infer(name, [features]).as_numpy("scores").shape == (3, 2)


def _placed(name: str, count: int) -> list[dict[str, Any]]:
    """Triton's served group for `count` per GPU on every visible GPU, or `count` on the CPU."""
    if GPUS:
        return [{"name": name, "kind": "KIND_GPU", "count": count, "gpus": list(GPUS)}]
    return [{"name": name, "kind": "KIND_CPU", "count": count}]


def test_kind_auto_is_served_resolved(client: triton.InferenceServerClient) -> None:
    # It had been served as KIND_AUTO (proto3's default, so tritonclient's JSON had no `kind`).
    assert _groups(client, "auto_kind") == _placed("auto_kind_0", 2)
    _infers(client, "auto_kind")


def test_a_gpu_group_is_served_where_its_instances_run(
    client: triton.InferenceServerClient, server: ServerProcess
) -> None:
    # Without a GPU: 2 CPU instances, served as such (it had said KIND_GPU), the fallback said
    # once in the model's load warning.
    assert _groups(client, "gpu_kind") == _placed("gpu_kind_0", 2)
    _infers(client, "gpu_kind")
    if not GPUS:
        warned = [line for line in server.output().splitlines() if "gpu_kind" in line and "WARNING" in line]
        assert len(warned) == 1, warned
        assert (
            "instance_group 'gpu_kind_0' KIND_GPU (no GPU: 2 CPU instances, served as KIND_CPU)" in warned[0]
        )


def test_a_gpu_accelerator_beside_cpu_groups_only_loads_unused(
    client: triton.InferenceServerClient, server: ServerProcess
) -> None:
    # Triton loads it: the accelerator applies to GPU instances, and there are none (it had been
    # refused: "needs a KIND_GPU or KIND_AUTO instance_group").
    assert client.is_model_ready("cpu_trt")
    assert _groups(client, "cpu_trt") == [{"name": "c", "kind": "KIND_CPU", "count": 2}]
    _infers(client, "cpu_trt")
    warned = [line for line in server.output().splitlines() if "cpu_trt" in line and "WARNING" in line]
    assert len(warned) == 1, warned
    assert "gpu_execution_accelerator ['tensorrt'] (unused: every instance is KIND_CPU" in warned[0]
    assert "not in this onnxruntime build" not in warned[0]  # never asked for on a CPU instance
    assert "cpu_trt version 1: instances c x2 (cpu)" in server.output()
