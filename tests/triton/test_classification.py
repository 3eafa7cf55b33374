"""tritonclient's classification requests (`InferRequestedOutput(name, class_count=k)`) against a
densenet_onnx-style model: Triton's strings, "value:index:label", top k per row."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.support.server_process import ServerProcess
from tests.support.triton_repo import triton_repository


@pytest.fixture(scope="module")
def server(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = triton_repository(
        tmp_path_factory.mktemp("cls-repo"),
        tmp_path_factory.mktemp("cls-files"),
        demo_repo / "mlp" / "1" / "model.onnx",
    )
    with ServerProcess("--model-repository", str(repo)) as process:
        yield process


def _input(rows: int) -> grpcclient.InferInput:
    data = np.random.default_rng(11).standard_normal((rows, 3, 224, 224)).astype(np.float32)
    tensor = grpcclient.InferInput("data_0", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    return tensor


def test_class_count_returns_tritons_strings(server: ServerProcess) -> None:
    with grpcclient.InferenceServerClient(server.address) as client:
        assert "classification" in client.get_server_metadata().extensions
        tensor = _input(2)
        raw = client.infer("densenet_onnx", [tensor]).as_numpy("fc6_1")
        result = client.infer(
            "densenet_onnx", [tensor], outputs=[grpcclient.InferRequestedOutput("fc6_1", class_count=4)]
        )
    classes = result.as_numpy("fc6_1")
    assert classes.shape == (2, 4) and result.get_output("fc6_1").datatype == "BYTES"
    for row in range(2):
        top = np.argsort(-raw[row], kind="stable")[:4]
        # std::to_string(float): "%f" of the value, then ":index:label".
        expected = [f"{float(raw[row, i]):f}:{i}:class_{i}".encode() for i in top]
        assert list(classes[row]) == expected


def test_negative_class_count_is_refused_naming_classification(server: ServerProcess) -> None:
    # (tritonclient sends no parameter at all for class_count=0: the plain output comes back.)
    with (
        grpcclient.InferenceServerClient(server.address) as client,
        pytest.raises(InferenceServerException, match="classification") as err,
    ):
        client.infer(
            "densenet_onnx",
            [_input(1)],
            outputs=[grpcclient.InferRequestedOutput("fc6_1", class_count=-1)],
        )
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
