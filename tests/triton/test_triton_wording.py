"""Triton's own QA tests match these error texts (qa/L0_server_status, qa/L0_input_validation):
the same calls through tritonclient get the same words from sluiceway (README "Errors")."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess

# Load names from Triton's ModelNameValidationTest: refused as path traversal, or merely not found.
TRAVERSAL_NAMES = [
    "../etc",
    "a/../b",
    "../../etc/passwd",
    "model/..",
    "..",
    "/etc/passwd",
    "model/",
    " ..",
    ".. ",
]
PLAIN_NAMES = ["model123", "model.version1", "...", "..my_model", "model..1"]
EMPTY_NAMES = ["", " ", "\t", "\n", " \t \n "]


def client_for(server: ServerProcess) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(server.address)


def message_of(call: object, *args: object, **kwargs: object) -> str:
    with pytest.raises(InferenceServerException) as info:
        call(*args, **kwargs)  # type: ignore[operator]
    return str(info.value.message())


def features(data: np.ndarray, shape: list[int]) -> grpcclient.InferInput:
    """`data` sent with a `shape` that does not describe it (tritonclient's set_shape allows it)."""
    datatype = "BYTES" if data.dtype == object else "FP32"
    tensor = grpcclient.InferInput("features", list(data.shape), datatype)
    tensor.set_data_from_numpy(data)
    tensor.set_shape(shape)
    return tensor


def test_unknown_model_and_version_start_with_tritons_words(demo_server: ServerProcess) -> None:
    client = client_for(demo_server)
    assert message_of(client.get_model_metadata, "foo").startswith(
        "Request for unknown model: 'foo' is not found"
    )
    assert message_of(client.get_model_metadata, "mlp", model_version="99").startswith(
        "Request for unknown model: 'mlp' version 99 is not found"
    )
    good = features(np.zeros((1, 64), np.float32), [1, 64])
    assert message_of(client.infer, "foo", [good]).startswith("Request for unknown model")


def test_missing_inputs_in_tritons_words(demo_server: ServerProcess) -> None:
    assert message_of(client_for(demo_server).infer, "mlp", []) == (
        "expected 1 inputs but got 0 inputs for model 'mlp'. Got input(s) [], but missing required "
        "input(s) ['features']. Please provide all required input(s)."
    )


def test_byte_size_and_string_counts_in_tritons_words(demo_server: ServerProcess) -> None:
    client = client_for(demo_server)
    wider = features(np.zeros((1, 66), np.float32), [1, 64])
    assert "input byte size mismatch for input 'features' for model 'mlp'. Expected 256, got 264" in (
        message_of(client.infer, "mlp", [wider])
    )
    # A BYTES payload is counted before its datatype is compared with the model's.
    fewer = features(np.array([[str(i) for i in range(14)]], dtype=object), [1, 16])
    assert "expected 16 string elements for inference input 'features' for model 'mlp', got 14" in (
        message_of(client.infer, "mlp", [fewer])
    )
    more = features(np.array([[str(i) for i in range(18)]], dtype=object), [1, 16])
    assert (
        "unexpected number of string elements 17 for inference input 'features' for model 'mlp', expecting 16"
        in message_of(client.infer, "mlp", [more])
    )


def test_load_names_in_tritons_words(limits_server: ServerProcess) -> None:
    client = client_for(limits_server)
    for name in TRAVERSAL_NAMES:
        assert "model name must not contain path traversal characters" in message_of(
            client.load_model, name
        ), name
        # Unload does not speak of traversal (Triton's test_model_name_invalid_unload).
        assert "path traversal" not in message_of(client.unload_model, name), name
    for name in EMPTY_NAMES:
        assert "Model name cannot be empty. Please enter a valid name to deploy." in message_of(
            client.load_model, name
        ), name
    for name in PLAIN_NAMES:
        message = message_of(client.load_model, name)
        assert "path traversal" not in message and "failed to poll from model repository" in message, name


def test_statistics_of_a_version_not_served_in_tritons_words(demo_server: ServerProcess) -> None:
    """Triton's core (ServerModelStatistics) answers INVALID_ARG for a version not ready and for a
    model with no version ready, known or not: ours had been NOT_FOUND for both."""
    client = client_for(demo_server)
    for version in ("99", "0"):
        with pytest.raises(InferenceServerException) as info:
            client.get_inference_statistics("mlp", model_version=version)
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert info.value.message().startswith("requested model version is not available for model 'mlp'")
    for version in ("1", ""):
        with pytest.raises(InferenceServerException) as info:
            client.get_inference_statistics("foo", model_version=version)
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert info.value.message() == "requested model 'foo' is not available"


def test_a_failed_load_in_tritons_words(tmp_path: Path, demo_repo: Path) -> None:
    # Triton's qa/L0_lifecycle matches "load failed for model" on an explicit load that fails.
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "model.onnx").write_bytes(b"not onnx")
    mlp = demo_repo / "mlp"
    write_model(tmp_path, "mlp", mlp / "1" / "model.onnx", (mlp / "config.pbtxt").read_text())
    with ServerProcess("--model-repository", str(tmp_path), "--model-control-mode", "explicit") as server:
        client = client_for(server)
        assert message_of(client.load_model, "broken").startswith("load failed for model 'broken': ")
        client.load_model("mlp")
        wrong = {"name": "mlp", "platform": "onnxruntime_onnx", "max_batch_size": 8,
                 "input": [{"name": "nope", "data_type": "TYPE_FP32", "dims": [64]}]}  # fmt: skip
        said = message_of(client.load_model, "mlp", config=json.dumps(wrong))
        assert said.startswith("load failed for model 'mlp'"), said
        assert client.is_model_ready("mlp")  # the failed reload left the serving version
