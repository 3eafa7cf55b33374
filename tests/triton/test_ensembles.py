"""tritonclient.grpc against sluiceway's ensembles (README "Ensembles"): a DAG ensemble's outputs,
its metadata, and a failing step's error naming the step."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.support.ensemble_repo import ensemble_repository
from tests.support.server_process import ServerProcess


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[grpcclient.InferenceServerClient]:
    repo = ensemble_repository(tmp_path_factory.mktemp("ens-repo"), tmp_path_factory.mktemp("ens-files"))
    with ServerProcess("--model-repository", str(repo), "--allow-fault-injection") as server:
        yield grpcclient.InferenceServerClient(url=server.address)


def _input(data: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("IN", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    return tensor


def test_dag_ensemble_through_tritonclient(client: grpcclient.InferenceServerClient) -> None:
    data = np.arange(8, dtype=np.float32).reshape(2, 4)
    result = client.infer("dag", [_input(data)], outputs=[grpcclient.InferRequestedOutput("OUT")])
    np.testing.assert_allclose(result.as_numpy("OUT"), 3 * data + 1)
    assert result.as_numpy("A") is None  # only what was asked for
    assert client.get_model_metadata("dag").platform == "ensemble"
    assert client.is_model_ready("dag")


def test_failing_step_through_tritonclient(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer("failing", [_input(np.zeros((1, 4), np.float32))])
    assert info.value.status() == "StatusCode.INTERNAL"
    assert "in ensemble 'failing', step 2 (model 'faulty') failed" in info.value.message()
