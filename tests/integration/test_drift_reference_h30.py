"""A drift reference that does not fit its model fails the load, naming the array: a misnamed
tensor ('out:Y' for 'y') had loaded and been ignored, a [300, 1] reference of a [N, 2] output had
loaded as a pooled series comparing one column with two. Through tritonclient's RepositoryModelLoad
(the config completed from the ONNX graph, the reference uploaded beside it), as a Triton user loads."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from tests.support.repositories import demo_repository
from tests.support.server_process import ServerProcess

# The demo mlp: input 'features' [N, 64], output 'scores' [N, 2].
CONFIG = json.dumps(
    {
        "max_batch_size": 8,
        "parameters": {
            "sample_ratio": {"string_value": "1"},
            "drift_reference": {"string_value": "1/ref.npz"},  # uploads go under a version,
        },
    }
)


@pytest.fixture(scope="module")
def client() -> Iterator[triton.InferenceServerClient]:
    with (
        ServerProcess("--model-control-mode", "explicit") as server,
        triton.InferenceServerClient(server.address) as tc,
    ):
        yield tc


@pytest.fixture(scope="module")
def mlp_bytes() -> bytes:
    return (demo_repository() / "mlp" / "1" / "model.onnx").read_bytes()


def _load(client: triton.InferenceServerClient, name: str, mlp: bytes, **arrays: np.ndarray) -> None:
    npz = io.BytesIO()
    np.savez(npz, **arrays)
    files = {"file:1/model.onnx": mlp, "file:1/ref.npz": npz.getvalue()}
    client.load_model(name, config=CONFIG, files=files)


@pytest.mark.parametrize(
    ("arrays", "said"),
    [
        (
            {"out:Scores": np.zeros((300, 2), np.float32)},
            "the array 'out:Scores' names no output of the model (outputs: 'scores')",
        ),
        (
            {"out:scores": np.zeros((300, 1), np.float32)},
            "the array 'out:scores' is shaped [300, 1], but the output 'scores' is [rows, 2]",
        ),
    ],
    ids=["unknown_tensor", "wrong_shape"],
)
def test_a_reference_that_does_not_fit_the_model_fails_its_load(
    client: triton.InferenceServerClient,
    mlp_bytes: bytes,
    arrays: dict[str, np.ndarray],
    said: str,
    request: pytest.FixtureRequest,
) -> None:
    name = "drift_" + request.node.callspec.id
    with pytest.raises(InferenceServerException) as info:
        _load(client, name, mlp_bytes, **arrays)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT", info.value.message()
    message = str(info.value.message())
    assert "RepositoryModelLoad parameters['config']: parameters 'drift_reference' '1/ref.npz'" in message
    assert said in message
    assert not client.is_model_ready(name)


def test_a_reference_that_fits_loads(client: triton.InferenceServerClient, mlp_bytes: bytes) -> None:
    reference = {"in:features": np.zeros((10, 64), np.float32), "out:scores": np.zeros((10, 2), np.float32)}
    _load(client, "drift_fits", mlp_bytes, **reference)
    assert client.is_model_ready("drift_fits")
