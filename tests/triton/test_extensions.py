"""ServerMetadata's `extensions` lists exactly what works: each advertised name (Triton's names)
has a real call here that exercises it, and the table and the list must be equal, so neither
can drift. `cuda_shared_memory` is absent: this server has no GPU regions to register."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm
from tritonclient.grpc import InferenceServerClient as Client

from server.protocol.servicer import EXTENSIONS
from tests.support import sequence_models as sm
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess


@pytest.fixture(scope="module")
def server(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("ext-repo")
    mlp = demo_repo / "mlp"
    write_model(repo, "mlp", mlp / "1" / "model.onnx", (mlp / "config.pbtxt").read_text())
    acc = sm.accumulator_model(tmp_path_factory.mktemp("ext-files") / "acc.onnx")
    write_model(repo, "accumulate", acc, sm.accumulator_config())
    (repo / "mlp_ensemble" / "1").mkdir(parents=True)
    (repo / "mlp_ensemble" / "config.pbtxt").write_text(ENSEMBLE)
    args = ("--model-control-mode", "explicit", "--load-model", "*", "--allow-client-shm")
    with ServerProcess("--model-repository", str(repo), *args) as process:
        yield process


ENSEMBLE = """platform: "ensemble"
max_batch_size: 8
input { name: "features" data_type: TYPE_FP32 dims: [64] }
output { name: "scores" data_type: TYPE_FP32 dims: [2] }
ensemble_scheduling { step { model_name: "mlp" model_version: -1
    input_map { key: "features" value: "features" } output_map { key: "scores" value: "scores" } } }
"""


def features(rows: int = 1) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("features", [rows, 64], "FP32")
    tensor.set_data_from_numpy(np.ones((rows, 64), np.float32))
    return tensor


def classification(client: Client) -> None:
    result = client.infer(
        "mlp", [features()], outputs=[grpcclient.InferRequestedOutput("scores", class_count=1)]
    )
    assert result.get_output("scores").datatype == "BYTES" and result.as_numpy("scores").shape == (1, 1)


def sequence(client: Client) -> None:
    def step(value: float, start: bool, end: bool) -> float:
        tensor = grpcclient.InferInput("x", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.full((1, 4), value, np.float32))
        out = client.infer("accumulate", [tensor], sequence_id=7, sequence_start=start, sequence_end=end)
        return float(out.as_numpy("out")[0, 0])

    assert [step(1, True, False), step(2, False, True)] == [1, 3]  # state kept between the requests


def model_repository(client: Client) -> None:
    client.unload_model("mlp")
    assert not client.is_model_ready("mlp")
    client.load_model("mlp")
    assert client.is_model_ready("mlp")
    names = {m.name for m in client.get_model_repository_index().models}
    assert {"mlp", "accumulate"} <= names


def unload_dependents(client: Client) -> None:
    client.load_model("mlp_ensemble")  # loads its step, mlp, too
    assert client.is_model_ready("mlp_ensemble") and client.is_model_ready("mlp")
    client.unload_model("mlp_ensemble", unload_dependents=True)
    assert not client.is_model_ready("mlp_ensemble") and not client.is_model_ready("mlp")  # its step too
    client.load_model("mlp")
    assert client.is_model_ready("mlp")


def schedule_policy(client: Client) -> None:
    # Per-request `priority` and `timeout` (microseconds) parameters, Triton's schedule_policy.
    result = client.infer("mlp", [features()], priority=1, timeout=30_000_000)
    assert result.as_numpy("scores").shape == (1, 2)


def model_configuration(client: Client) -> None:
    config = client.get_model_config("mlp").config
    assert config.name == "mlp" and [i.name for i in config.input] == ["features"]


def statistics(client: Client) -> None:
    client.infer("mlp", [features()])
    (stats,) = client.get_inference_statistics("mlp").model_stats
    assert stats.name == "mlp" and stats.inference_stats.success.count >= 1


def binary_tensor_data(client: Client) -> None:
    response = client.infer("mlp", [features(2)]).get_response()
    assert [len(raw) for raw in response.raw_output_contents] == [2 * 2 * 4]  # raw FP32 bytes


def system_shared_memory(client: Client) -> None:
    key = f"/sluiceway_ext_{uuid.uuid4().hex[:12]}"
    handle = shm.create_shared_memory_region("ext_in", key, 64 * 4)
    try:
        shm.set_shared_memory_region(handle, [np.ones((1, 64), np.float32)])
        client.register_system_shared_memory("ext_in", key, 64 * 4)
        tensor = grpcclient.InferInput("features", [1, 64], "FP32")
        tensor.set_shared_memory("ext_in", 64 * 4)
        from_region = client.infer("mlp", [tensor]).as_numpy("scores")
        np.testing.assert_array_equal(from_region, client.infer("mlp", [features()]).as_numpy("scores"))
    finally:
        client.unregister_system_shared_memory("ext_in")
        shm.destroy_shared_memory_region(handle)


def trace(client: Client) -> None:
    changed = client.update_trace_settings(model_name="mlp", settings={"trace_rate": "4"}, as_json=True)
    assert changed["settings"]["trace_rate"]["value"] == ["4"]
    client.update_trace_settings(model_name="mlp", settings={"trace_rate": None})
    assert client.get_trace_settings(as_json=True)["settings"]["trace_rate"]["value"] == ["1"]


def logging(client: Client) -> None:
    changed = client.update_log_settings(settings={"log_verbose_level": 1}, as_json=True)
    assert changed["settings"]["log_verbose_level"] == {"uint32_param": 1}
    client.update_log_settings(settings={"log_verbose_level": 0})


CALLS: dict[str, Callable[[Client], None]] = {
    "classification": classification,
    "sequence": sequence,
    "model_repository": model_repository,
    "model_repository(unload_dependents)": unload_dependents,
    "schedule_policy": schedule_policy,
    "model_configuration": model_configuration,
    "statistics": statistics,
    "binary_tensor_data": binary_tensor_data,
    "system_shared_memory": system_shared_memory,
    "trace": trace,
    "logging": logging,
}


def test_advertised_extensions_are_exactly_the_table(server: ServerProcess) -> None:
    with Client(server.address) as client:
        advertised = list(client.get_server_metadata().extensions)
    assert advertised == list(EXTENSIONS)
    assert sorted(advertised) == sorted(CALLS)
    assert "cuda_shared_memory" not in advertised


@pytest.mark.parametrize("extension", sorted(CALLS))
def test_each_advertised_extension_works(server: ServerProcess, extension: str) -> None:
    with Client(server.address) as client:
        CALLS[extension](client)
