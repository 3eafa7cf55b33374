"""Files a config names, when the config comes from a client (RepositoryModelLoad's `config`
parameter, with the model's files uploaded beside it): each must be a regular file inside the model
directory. An absolute `initial_state.data_file` had the server answer the bytes of any file it
could read; a FIFO named as warm-up data froze the whole server; a warm-up count of 1e9 held the
load for good. Through tritonclient, as a Triton user loads models."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from tests.support.repositories import demo_repository
from tests.support.sequence_models import accumulator_model
from tests.support.server_process import ServerProcess

SECRET = b"0123456789abcdef"  # 16 bytes: exactly the state's f32[4]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess("--model-control-mode", "explicit", "--load-model", "mlp") as running:
        yield running


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(server.address) as tc:
        yield tc


@pytest.fixture(scope="module")
def accumulator(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return accumulator_model(tmp_path_factory.mktemp("acc") / "model.onnx").read_bytes()


def _state_config(data_file: str) -> str:
    init = {"data_type": "TYPE_FP32", "dims": [4], "data_file": data_file, "name": "init"}
    state = {"input_name": "acc", "output_name": "acc_out", "data_type": "TYPE_FP32", "dims": [4]}
    return json.dumps(
        {"max_batch_size": 8, "sequence_batching": {"state": [{**state, "initial_state": [init]}]}}
    )


def _refused(client: triton.InferenceServerClient, name: str, config: str, files: dict[str, Any]) -> str:
    with pytest.raises(InferenceServerException) as info:
        client.load_model(name, config=config, files=files)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT", info.value.message()
    return str(info.value.message())


@pytest.mark.parametrize("where", ["absolute", "dotdot"])
def test_an_initial_state_file_outside_the_model_directory_is_refused(
    client: triton.InferenceServerClient, accumulator: bytes, tmp_path: Path, where: str
) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(SECRET)
    data_file = str(secret) if where == "absolute" else "../../../../../../../../.." + str(secret)
    message = _refused(client, f"leak_{where}", _state_config(data_file), {"file:1/model.onnx": accumulator})
    assert "initial_state.data_file" in message and "0123456789" not in message
    # '..' leads out; an absolute path is taken under initial_state/, where no such file is.
    said = "is outside the model directory" if where == "dotdot" else "cannot be read: No such file"
    assert said in message


def _states_config(*initials: dict[str, Any], listed: bool = False) -> str:
    state = {"input_name": "acc", "output_name": "acc_out", "data_type": "TYPE_FP32", "dims": [4]}
    config: dict[str, Any] = {
        "max_batch_size": 8,
        "sequence_batching": {"state": [{**state, "initial_state": [init]} for init in initials]},
    }
    if listed:  # the state's input listed as the client's too
        config["input"] = [{"name": "acc", "data_type": "TYPE_FP32", "dims": [4]}]
    return json.dumps(config)


ZEROS = {"data_type": "TYPE_FP32", "dims": [4], "zero_data": True, "name": "zeros"}


def test_a_sequence_config_triton_refuses_is_refused_naming_the_field(
    client: triton.InferenceServerClient, accumulator: bytes
) -> None:
    files = {"file:1/model.onnx": accumulator}
    twice = _refused(client, "acc_twice", _states_config(ZEROS, {**ZEROS, "name": "again"}), files)
    assert "state[1]: input_name 'acc' is also state[0]'s" in twice
    unnamed = _refused(
        client, "acc_unnamed", _states_config({k: v for k, v in ZEROS.items() if k != "name"}), files
    )
    assert "state[0].initial_state: name is required" in unnamed
    listed = _refused(client, "acc_listed", _states_config(ZEROS, listed=True), files)
    assert "input 'acc' is a sequence_batching state's input_name, which the server feeds" in listed
    assert client.is_server_live() and client.is_model_ready("mlp")


def _mlp_config(**warmup: Any) -> str:
    features = {"data_type": "TYPE_FP32", "dims": [64], **warmup}
    sample = {"name": "w", "batch_size": 1, "inputs": {"features": features}}
    return json.dumps({"max_batch_size": 8, "model_warmup": [sample]})


@pytest.fixture(scope="module")
def mlp_bytes() -> bytes:
    return (demo_repository() / "mlp" / "1" / "model.onnx").read_bytes()


def test_a_fifo_named_as_warm_up_data_is_refused_and_the_server_keeps_answering(
    server: ServerProcess, client: triton.InferenceServerClient, mlp_bytes: bytes, tmp_path: Path
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    config = _mlp_config(input_data_file="../../../../../../../../.." + str(fifo))
    message = _refused(client, "warm_fifo", config, {"file:1/model.onnx": mlp_bytes})
    assert "input_data_file" in message and "is outside the model directory" in message
    assert client.is_server_live() and client.is_model_ready("mlp")


def test_a_warm_up_count_past_the_limit_is_refused_at_once(
    client: triton.InferenceServerClient, mlp_bytes: bytes
) -> None:
    config = json.loads(_mlp_config(zero_data=True))
    config["model_warmup"][0]["count"] = 1_000_000_000
    message = _refused(client, "warm_count", json.dumps(config), {"file:1/model.onnx": mlp_bytes})
    assert "count 1000000000 is past the limit 1000" in message
    index = {m.name: m.state for m in client.get_model_repository_index().models}
    assert index.get("warm_count") != "LOADING"


def test_a_drift_reference_outside_the_model_directory_is_refused(
    client: triton.InferenceServerClient, mlp_bytes: bytes, tmp_path: Path
) -> None:
    reference = tmp_path / "ref.npz"
    np.savez(reference, **{"in:features": np.zeros((4, 64), np.float32)})
    parameters = {"drift_reference": {"string_value": str(reference)}}  # absolute: taken as it is
    config = {"max_batch_size": 8, "parameters": parameters}
    message = _refused(client, "drift_out", json.dumps(config), {"file:1/model.onnx": mlp_bytes})
    assert "drift_reference" in message and "is outside the model directory" in message
    # Named as where the config came from, not the config.pbtxt it replaced.
    assert "RepositoryModelLoad parameters['config']: parameters 'drift_reference'" in message
