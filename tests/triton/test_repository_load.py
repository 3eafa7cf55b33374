"""tritonclient's load_model(name, config=..., files=...) and the none-mode refusal, as Triton's
own client sees them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from tests.support.server_process import ServerProcess
from tests.triton.test_tritonclient import client_for, expect_error, mlp_input


def test_load_model_with_a_config_override_and_files(limits_server: ServerProcess, demo_repo: Path) -> None:
    # limits_server runs --model-control-mode explicit --load-model '*'.
    client = client_for(limits_server)
    onnx = (demo_repo / "mlp" / "1" / "model.onnx").read_bytes()
    client.load_model("uploaded", config=json.dumps({"max_batch_size": 3}), files={"file:1/model.onnx": onnx})
    assert client.is_model_ready("uploaded")
    assert client.get_model_config("uploaded", as_json=True)["config"]["max_batch_size"] == 3
    tensor, _ = mlp_input(3)
    scores = client.infer("uploaded", [tensor]).as_numpy("scores")
    assert isinstance(scores, np.ndarray) and scores.shape == (3, 2)
    expect_error(
        "INVALID_ARGUMENT", "need the 'config' parameter", client.load_model, "x", files={"file:1/m": b"x"}
    )
    expect_error(
        "INVALID_ARGUMENT",
        "relative path",
        client.load_model,
        "x",
        config="{}",
        files={"file:1/../../m": b"x"},
    )
    client.unload_model("uploaded")
    assert not client.is_model_ready("uploaded")


def test_none_mode_refuses_load_and_unload_as_triton_does(demo_server: ServerProcess) -> None:
    client: grpcclient.InferenceServerClient = client_for(demo_server)
    words = "explicit model load / unload is not allowed if polling is enabled"
    expect_error("UNAVAILABLE", words, client.load_model, "mlp")
    expect_error("UNAVAILABLE", words, client.unload_model, "mlp")
    assert client.is_model_ready("mlp")
