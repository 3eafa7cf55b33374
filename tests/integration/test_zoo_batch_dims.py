"""A model whose outputs' first dim is not the batch, though every first dim is variable: column
sums (ReduceSum over axis 0, x [N, M] -> y [M]). Batching it handed each of three coalesced
requests one element of the batch's column sums, OK; now completion leaves it unbatched (each
request answered whole) and a config that says max_batch_size > 0 fails its load, naming why."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tg

from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess
from tests.support.zoo_checks import BATCH_OF_FOUR_ROWS, assert_each_alone, ours_together, triton_together
from tests.support.zoo_models import column_sums


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    repo = tmp_path_factory.mktemp("zoo-dims")
    model = column_sums(tmp_path_factory.mktemp("zoo-dims-files") / "column_sums.onnx")
    write_model(repo, "sums_batched", model, BATCH_OF_FOUR_ROWS)
    write_model(repo, "sums", model, None)
    with ServerProcess("--model-repository", str(repo)) as server:
        yield server, model


def _requests() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    return [{"x": rng.integers(-9, 9, (rows, 3)).astype(np.float32)} for rows in (1, 2, 1)]


def test_batching_said_in_the_config_fails_the_load_naming_the_output(
    zoo: tuple[ServerProcess, Path],
) -> None:
    server, _ = zoo
    client = tg.InferenceServerClient(server.address)
    try:
        index = {m.name: m for m in client.get_model_repository_index().models}
    finally:
        client.close()
    assert index["sums_batched"].state == "UNAVAILABLE"
    reason = index["sums_batched"].reason
    assert "output 'y'" in reason and "'M' is dim 1 of 'x'" in reason, reason
    assert "not the batch dimension" in reason and "max_batch_size: 0" in reason, reason


@pytest.mark.parametrize("send", ["tritonclient", "ours"])
def test_completed_without_a_config_each_request_gets_its_own_column_sums(
    zoo: tuple[ServerProcess, Path], send: str
) -> None:
    server, model = zoo
    requests = _requests()
    if send == "tritonclient":
        answers = triton_together(server.address, "sums", requests, ["y"])
    else:
        answers = ours_together(server.address, "sums", requests)
    assert_each_alone(model, requests, answers, "sums")
