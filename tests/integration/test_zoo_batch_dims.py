"""Models whose outputs' first dim is not the batch, though every first dim is variable. Column
sums (ReduceSum over axis 0, x [N, M] -> y [M]): batching it handed each of three coalesced
requests one element of the batch's column sums, OK; now completion leaves it unbatched (each
request answered whole) and a config that says max_batch_size > 0 fails its load, naming why.
NonZero's rows (idx [nnz, 2]), which no graph symbol tells from the batch: a run whose output does
not hold its rows answers UNIMPLEMENTED naming the output, as Triton's UNSUPPORTED (it was INTERNAL,
the output named only in the server log)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tg

from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess
from tests.support.zoo_checks import BATCH_OF_FOUR_ROWS, assert_each_alone, ours_together, triton_together
from tests.support.zoo_models import column_sums, nonzero_rows


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    repo = tmp_path_factory.mktemp("zoo-dims")
    model = column_sums(tmp_path_factory.mktemp("zoo-dims-files") / "column_sums.onnx")
    write_model(repo, "sums_batched", model, BATCH_OF_FOUR_ROWS)
    write_model(repo, "sums", model, None)
    nonzero = nonzero_rows(tmp_path_factory.mktemp("zoo-dims-files") / "nonzero_rows.onnx")
    write_model(repo, "nonzero_batched", nonzero, BATCH_OF_FOUR_ROWS)
    write_model(repo, "nonzero", nonzero, None)
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


# Two nonzeros a row: 8 rows of indices for a run of 4 rows, 2 for a request of 1 row alone.
NONZERO_REQUESTS = [{"x": np.tile(np.float32([[1, 0, 2, 0]]), (rows, 1))} for rows in (1, 2, 1)]


@pytest.mark.parametrize(
    ("model", "requests"), [("nonzero_batched", NONZERO_REQUESTS), ("nonzero", NONZERO_REQUESTS[:1])]
)
@pytest.mark.parametrize("send", ["tritonclient", "ours"])
def test_an_output_without_the_runs_rows_answers_unimplemented_naming_it(
    zoo: tuple[ServerProcess, Path], model: str, requests: list[dict[str, np.ndarray]], send: str
) -> None:
    server, _ = zoo
    if send == "tritonclient":
        answers = triton_together(server.address, model, requests, ["idx"])
    else:
        answers = ours_together(server.address, model, requests)
    rows = sum(len(r["x"]) for r in requests)
    for answer in answers:
        assert isinstance(answer, Exception), answer
        text = str(answer)
        assert (
            "UNIMPLEMENTED" in text and f"'idx' with shape ({2 * rows}, 2) for a batch of {rows} rows" in text
        )
    # The server serves on: column sums, completed unbatched, still answer.
    good = _requests()
    assert_each_alone(zoo[1], good, ours_together(server.address, "sums", good), "sums")
