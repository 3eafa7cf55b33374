"""Two inputs whose steps the graph names alike ('T' on x [N, T, 4] and ids [N, T]) with nothing
in the graph tying their sizes. The load's reading takes them for equal and batches the model;
onnxruntime checks nothing, so four one-row requests of x [1, 3, 4] and ids [1, 5] had run as one
batch and each of three got the next request's step of x, OK (alone, onnxruntime refuses the
index). Where requests are batched together such a request is now refused, naming both inputs and
the name; where each runs alone, onnxruntime answers it as it does (server/models/dim_ties.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg
from tritonclient.utils import InferenceServerException

from clients.errors import SluicewayError
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess
from tests.support.zoo_checks import BATCH_OF_FOUR_ROWS, assert_each_alone, ours_together, triton_together
from tests.support.zoo_models import tied_steps

ALONE = "max_batch_size: 8\n"  # no dynamic batching: each request runs alone


@pytest.fixture(scope="module")
def tied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    repo = tmp_path_factory.mktemp("tied-repo")
    model = tied_steps(tmp_path_factory.mktemp("tied-files") / "tied.onnx")
    write_model(repo, "tied", model, BATCH_OF_FOUR_ROWS)
    write_model(repo, "tied_completed", model, None)
    write_model(repo, "tied_alone", model, ALONE)
    with ServerProcess("--model-repository", str(repo)) as server:
        yield server, model


def _request(rows: int, x_steps: int, ids_steps: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (rows, x_steps, 4)).astype(np.float32)
    ids = rng.normal(0, 1, (rows, ids_steps)).astype(np.float32)
    return {"x": x, "ids": ids}


def _assert_refused_naming_the_tie(error: object) -> None:
    if isinstance(error, InferenceServerException):
        code, details = error.status(), error.message()
        assert code == "StatusCode.INVALID_ARGUMENT", (code, details)
    else:
        assert isinstance(error, SluicewayError), error
        code, details = error.code, error.message
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    want = "input 'ids': dim 1 is 5, but input 'x' dim 1 is 3; the model's graph names both 'T'"
    assert details is not None and want in details, details


@pytest.mark.parametrize("send", ["tritonclient", "ours"])
def test_requests_whose_tied_steps_differ_are_refused_and_leak_nothing(
    tied: tuple[ServerProcess, Path], send: str
) -> None:
    server, _ = tied
    requests = [_request(1, 3, 5, seed) for seed in range(4)]  # four rows: one batch, at once
    for k, request in enumerate(requests):
        # The first three pick past their own steps of x (the next request's, batched); the last
        # picks its first step, so the batch runs (a pick past every row fails the whole run).
        request["ids"][0, 4 if k < 3 else 0] = 10.0
    if send == "tritonclient":
        answers = triton_together(server.address, "tied", requests, ["y"])
    else:
        answers = ours_together(server.address, "tied", requests)
    for answer in answers:
        _assert_refused_naming_the_tie(answer)


@pytest.mark.parametrize("model", ["tied", "tied_completed"])
def test_requests_whose_tied_steps_agree_are_batched_and_each_gets_its_answer_alone(
    tied: tuple[ServerProcess, Path], model: str
) -> None:
    server, file = tied
    requests = [_request(rows, 3, 3, seed) for seed, rows in enumerate((1, 2, 1))]
    assert_each_alone(file, requests, triton_together(server.address, model, requests, ["y"]), model)
    assert_each_alone(file, requests, ours_together(server.address, model, requests), model)


def test_the_completed_config_batches_it_and_is_refused_the_same(tied: tuple[ServerProcess, Path]) -> None:
    server, _ = tied
    client = tg.InferenceServerClient(server.address)
    try:
        config = client.get_model_config("tied_completed").config
    finally:
        client.close()
    assert config.max_batch_size > 1 and config.HasField("dynamic_batching"), config
    (answer,) = ours_together(server.address, "tied_completed", [_request(1, 3, 5, 7)])
    _assert_refused_naming_the_tie(answer)


def test_a_model_running_each_request_alone_answers_as_onnxruntime_does(
    tied: tuple[ServerProcess, Path],
) -> None:
    server, file = tied
    request = _request(2, 3, 5, 3)
    request["ids"][:, 1] = 10.0  # a pick within x's own steps: onnxruntime answers it alone
    assert_each_alone(file, [request], ours_together(server.address, "tied_alone", [request]), "tied_alone")
