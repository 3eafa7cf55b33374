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
X = 'input { name: "x" data_type: TYPE_FP32 dims: [ -1, 4 ] }\n'
RESHAPED_IDS = X + 'input { name: "ids" data_type: TYPE_FP32 dims: [ -1, 1 ] reshape { shape: [ -1 ] } }\n'
OPTIONAL_IDS = X + 'input { name: "ids" data_type: TYPE_FP32 dims: [ -1 ] optional: true }\n'
STATEFUL = (  # the state, st, is the last request's x
    "max_batch_size: 8\n" + X + 'input { name: "ids" data_type: TYPE_FP32 dims: [ -1 ] }\n'
    'output { name: "y" data_type: TYPE_FP32 dims: [ 4 ] }\n'
    'sequence_batching { state [ { input_name: "st" output_name: "st_out" data_type: TYPE_FP32 '
    "dims: [ -1, 4 ] } ] }\n"
)


@pytest.fixture(scope="module")
def tied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    repo = tmp_path_factory.mktemp("tied-repo")
    model = tied_steps(tmp_path_factory.mktemp("tied-files") / "tied.onnx")
    write_model(repo, "tied", model, BATCH_OF_FOUR_ROWS)
    write_model(repo, "tied_completed", model, None)
    write_model(repo, "tied_alone", model, ALONE)
    write_model(repo, "tied_reshaped", model, BATCH_OF_FOUR_ROWS + RESHAPED_IDS)
    defaulted = tied_steps(tmp_path_factory.mktemp("tied-default") / "tied.onnx", default_steps=3)
    write_model(repo, "tied_default", defaulted, BATCH_OF_FOUR_ROWS + OPTIONAL_IDS)
    stateful = tied_steps(tmp_path_factory.mktemp("tied-state") / "tied.onnx", state=True)
    write_model(repo, "tied_state", stateful, STATEFUL)
    with ServerProcess("--model-repository", str(repo)) as server:
        yield server, model


def _request(rows: int, x_steps: int, ids_steps: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (rows, x_steps, 4)).astype(np.float32)
    ids = rng.normal(0, 1, (rows, ids_steps)).astype(np.float32)
    return {"x": x, "ids": ids}


def _leaking(ids_trailing: tuple[int, ...] = ()) -> list[dict[str, np.ndarray]]:
    """Four one-row requests of x [1, 3, 4] and ids of 5 steps: the first three pick past their own
    steps of x (the next request's, batched); the last picks its first step, so the batch runs (a
    pick past every row fails the whole run)."""
    requests = [_request(1, 3, 5, seed) for seed in range(4)]
    for k, request in enumerate(requests):
        request["ids"][0, 4 if k < 3 else 0] = 10.0
        request["ids"] = request["ids"].reshape(1, 5, *ids_trailing)
    return requests


def _assert_refused_naming_the_tie(error: object, ids: str = "input 'ids'") -> None:
    if isinstance(error, InferenceServerException):
        code, details = error.status(), error.message()
        assert code == "StatusCode.INVALID_ARGUMENT", (code, details)
    else:
        assert isinstance(error, SluicewayError), error
        code, details = error.code, error.message
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    want = f"{ids}: dim 1 is 5, but input 'x' dim 1 is 3; the model's graph names both 'T'"
    assert details is not None and want in details, details


@pytest.mark.parametrize("send", ["tritonclient", "ours"])
def test_requests_whose_tied_steps_differ_are_refused_and_leak_nothing(
    tied: tuple[ServerProcess, Path], send: str
) -> None:
    server, _ = tied
    requests = _leaking()  # four rows: one batch, at once
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


def test_a_reshaped_input_is_checked_as_the_model_sees_it(tied: tuple[ServerProcess, Path]) -> None:
    # ids sent [1, 5, 1], reshaped to [5] a row (a tester, session 53: the reshape had switched the
    # check off, and three of four requests got the next one's rows of x, OK).
    server, file = tied
    for answer in triton_together(server.address, "tied_reshaped", _leaking((1,)), ["y"]):
        _assert_refused_naming_the_tie(answer, "input 'ids' (as reshaped to [1, 5])")
    requests = [_request(rows, 3, 3, seed) for seed, rows in enumerate((1, 2, 1))]
    answers = ours_together(
        server.address, "tied_reshaped", [{**r, "ids": r["ids"][..., None]} for r in requests]
    )
    assert_each_alone(file, requests, answers, "tied_reshaped")


def test_an_input_with_a_default_is_checked_sent_and_left_out(
    tied: tuple[ServerProcess, Path], tmp_path: Path
) -> None:
    # ids is also an initializer of 3 steps, listed optional (a tester, session 53: sent with 5
    # steps it had not been checked, and three of four requests got the next one's rows of x, OK).
    server, _ = tied
    for answer in ours_together(server.address, "tied_default", _leaking()):
        _assert_refused_naming_the_tie(answer)
    (wide,) = ours_together(server.address, "tied_default", [{"x": _request(1, 5, 5, 9)["x"]}])
    assert isinstance(wide, SluicewayError) and wide.code == grpc.StatusCode.INVALID_ARGUMENT, wide
    assert "input 'ids' (left out: its initializer's): dim 1 is 3, but input 'x' dim 1 is 5" in wide.message
    left_out = [{"x": _request(rows, 3, 3, seed)["x"]} for seed, rows in enumerate((1, 2, 1))]
    answers = ours_together(server.address, "tied_default", left_out)  # four rows: one batch, at once
    defaulted = tied_steps(tmp_path / "default.onnx", default_steps=3)
    assert_each_alone(defaulted, left_out, answers, "tied_default")


def test_a_state_named_like_the_inputs_steps_fails_a_batching_load(tied: tuple[ServerProcess, Path]) -> None:
    # The state is the last request's x: 3 steps beside a request's 5 had let a pick bounded by
    # the request's steps read the next sequence's state, OK (a tester, session 53).
    client = tg.InferenceServerClient(tied[0].address)
    try:
        index = {m.name: m for m in client.get_model_repository_index().models}
    finally:
        client.close()
    assert index["tied_state"].state == "UNAVAILABLE", index["tied_state"]
    reason = index["tied_state"].reason
    assert "ONNX output 'y' mixes the rows of a batch" in reason and "sequence_batching" in reason, reason
