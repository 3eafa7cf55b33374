"""tritonclient.grpc with BF16 tensors (ml_dtypes.bfloat16 arrays) against a real sluiceway process:
metadata, exact round trips, and several BF16 requests batched into one run."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.support.bf16_models import bf16_repository
from tests.support.server_process import ServerProcess

BF16 = np.dtype(ml_dtypes.bfloat16)
BOUND_S = 30.0  # generous: only the 60 s queue delay (which batching must not wait for) exceeds it


@pytest.fixture(scope="module")
def bf16_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = bf16_repository(tmp_path_factory.mktemp("bf16"), tmp_path_factory.mktemp("bf16-files"))
    with ServerProcess("--model-repository", str(repo)) as server:
        yield server


def bf16_input(x: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("x", list(x.shape), "BF16")
    tensor.set_data_from_numpy(x)
    return tensor


def test_tritonclient_sends_and_reads_bf16(bf16_server: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(url=bf16_server.address)
    meta = client.get_model_metadata("bf16")
    assert meta.inputs[0].datatype == "BF16"
    x = (np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5).astype(BF16)
    result = client.infer("bf16", [bf16_input(x)])
    y = result.as_numpy("y")
    assert y.dtype == BF16 and y.shape == (3, 4)
    assert y.view(np.uint16).tolist() == x.view(np.uint16).tolist()
    np.testing.assert_array_equal(result.as_numpy("doubled").astype(np.float32), x.astype(np.float32) * 2)
    np.testing.assert_array_equal(result.as_numpy("wide"), x.astype(np.float32))


def test_tritonclient_bf16_requests_are_batched(bf16_server: ServerProcess) -> None:
    # 1 + 3 rows reach the preferred size of 4: one run, two answers.
    client = grpcclient.InferenceServerClient(url=bf16_server.address)
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    inputs = [np.full((rows, 4), value, np.float32).astype(BF16) for rows, value in ((1, 0.5), (3, -7.0))]
    for x in inputs:
        client.async_infer(
            "bf16_batched", [bf16_input(x)], callback=lambda result, error: answers.put((result, error))
        )
    by_rows: dict[int, Any] = {}
    for _ in inputs:
        result, error = answers.get(timeout=BOUND_S)
        assert error is None, error
        by_rows[result.as_numpy("y").shape[0]] = result
    for x in inputs:
        assert by_rows[x.shape[0]].as_numpy("y").view(np.uint16).tolist() == x.view(np.uint16).tolist()
    stats = client.get_inference_statistics("bf16_batched").model_stats[0]
    assert stats.inference_count == 4 and stats.execution_count == 1
