"""Models whose ops mix the rows of a batch while keeping its shape. A Softmax over axis 0, or the
batch's column means taken from every row: coalesced with other requests, a request's answer
depended on its batch mates, OK (as in Triton). Now completion leaves such a model unbatched (each
request answered as onnxruntime answers it alone), a config that batches requests together fails
its load naming the output and the op, and a config without dynamic batching runs each request
alone. A Softmax over an axis 0 that is not the batch's (a time-major read) is batched.
Session 51: a Reshape that moves values between rows (x.t().reshape(x.shape)) and the batch's size
read as a value (x / x.shape[0]) are read too, and a time-major fold that is undone stays batched.
Session 52: at opset 13, after a view whose shape is read from the input (onnx's Reshape-13
inference gave it no shape), a Softmax over the batch and a pick past a row's steps are read."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tg

from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess
from tests.support.zoo_checks import (
    BATCH_OF_FOUR_ROWS,
    alone,
    assert_each_alone,
    ours_together,
    triton_together,
)
from tests.support.zoo_models import (
    centered,
    divided_by_batch,
    folded_time_major,
    picked_op13,
    reshaped_rows,
    softmax_rows,
    time_major,
    viewed_op13,
)

VOUCHED = BATCH_OF_FOUR_ROWS + 'parameters { key: "rows_independent" value: { string_value: "true" } }\n'
ALONE = "max_batch_size: 8\n"  # no dynamic batching: each request runs alone
COMPLETED = ("softmax", "centered", "per_row", "time_major_batched", "moved", "divided", "folded")
COMPLETED += ("viewed", "viewed_per_row", "picked")  # configs completed: their max_batch_size is read
FILES = {
    "softmax_alone": "softmax",
    "time_major_batched": "time_major",
    "folded_batched": "folded",
    "picked_batched": "picked",
    "viewed_per_row_batched": "viewed_per_row",
}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, dict[str, Path]]]:
    repo = tmp_path_factory.mktemp("zoo-mixing")
    files = tmp_path_factory.mktemp("zoo-mixing-files")
    models = {
        "softmax": softmax_rows(files / "softmax.onnx"),
        "centered": centered(files / "centered.onnx"),
        "time_major": time_major(files / "time_major.onnx"),
        "per_row": softmax_rows(files / "per_row.onnx", axis=1),
        "moved": reshaped_rows(files / "moved.onnx"),
        "divided": divided_by_batch(files / "divided.onnx"),
        "folded": folded_time_major(files / "folded.onnx"),
        "viewed": viewed_op13(files / "viewed.onnx"),
        "viewed_per_row": viewed_op13(files / "viewed_per_row.onnx", axis=1),
        "picked": picked_op13(files / "picked.onnx"),
        "picked_past": picked_op13(files / "picked_past.onnx", past=1),
    }
    write_model(repo, "softmax", models["softmax"], None)
    write_model(repo, "softmax_batched", models["softmax"], BATCH_OF_FOUR_ROWS)
    write_model(repo, "softmax_alone", models["softmax"], ALONE)
    write_model(repo, "softmax_vouched", models["softmax"], VOUCHED)
    write_model(repo, "centered", models["centered"], None)
    write_model(repo, "centered_batched", models["centered"], BATCH_OF_FOUR_ROWS)
    write_model(repo, "time_major_batched", models["time_major"], BATCH_OF_FOUR_ROWS)
    write_model(repo, "per_row", models["per_row"], None)
    for name in ("moved", "divided", "folded", "viewed", "viewed_per_row", "picked", "picked_past"):
        write_model(repo, name, models[name], None)
        write_model(repo, f"{name}_batched", models[name], BATCH_OF_FOUR_ROWS)
    with ServerProcess("--model-repository", str(repo)) as server:
        yield server, models


def _requests(cols: int = 3) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(11)
    return [{"x": rng.normal(0, 2, (rows, cols)).astype(np.float32)} for rows in (1, 2, 1)]


def _triton(server: ServerProcess) -> tg.InferenceServerClient:
    return tg.InferenceServerClient(server.address)


def test_a_config_batching_requests_together_fails_the_load_naming_the_output_and_the_op(
    zoo: tuple[ServerProcess, dict[str, Path]],
) -> None:
    client = _triton(zoo[0])
    try:
        index = {m.name: m for m in client.get_model_repository_index().models}
    finally:
        client.close()
    for name, op in (("softmax_batched", "Softmax"), ("centered_batched", "ReduceMean")):
        assert index[name].state == "UNAVAILABLE", index[name]
        reason = index[name].reason
        assert "ONNX output 'y' mixes the rows of a batch" in reason, reason
        assert (
            f"the {op} node making" in reason and "works along the batch's axis, axis 0 of 'x'" in reason
        ), reason
        assert "remove dynamic_batching" in reason and "'rows_independent'" in reason, reason
    for name, why in (
        ("moved_batched", "the Reshape node making 'y' moves values between the batch's rows"),
        ("divided_batched", "the Div node making 'y' takes the batch's size as a value"),
        ("viewed_batched", "the Softmax node making 'y' works along the batch's axis, axis 0 of 'h'"),
        ("picked_past_batched", "the Gather node making 'y' picks from 'flat' at indices 'at'"),
    ):
        assert index[name].state == "UNAVAILABLE", index[name]
        assert "ONNX output 'y' mixes the rows of a batch" in index[name].reason, index[name]
        assert why in index[name].reason, index[name]
    ready = ("softmax", "softmax_alone", "softmax_vouched", "centered", "time_major_batched", "per_row")
    ready += ("moved", "divided", "folded", "folded_batched", "viewed", "viewed_per_row_batched")
    ready += ("picked_batched",)
    assert {name: index[name].state for name in ready} == dict.fromkeys(ready, "READY")


def test_completion_leaves_a_mixing_model_unbatched_and_a_per_row_one_batched(
    zoo: tuple[ServerProcess, dict[str, Path]],
) -> None:
    client = _triton(zoo[0])
    try:
        sizes = {name: client.get_model_config(name).config.max_batch_size for name in COMPLETED}
        batching = client.get_model_config("per_row").config.HasField("dynamic_batching")
    finally:
        client.close()
    assert sizes == {
        "softmax": 0,
        "centered": 0,
        "per_row": 64,
        "time_major_batched": 8,
        "moved": 0,
        "divided": 0,
        "folded": 64,
        "viewed": 0,
        "viewed_per_row": 64,
        "picked": 64,
    }
    assert batching


@pytest.mark.parametrize(
    "model",
    [
        "softmax",
        "softmax_alone",
        "centered",
        "time_major_batched",
        "per_row",
        "moved",
        "divided",
        "folded",
        "folded_batched",
        "viewed",
        "viewed_per_row_batched",
        "picked_batched",
    ],
)
@pytest.mark.parametrize("send", ["tritonclient", "ours"])
def test_each_request_gets_the_answer_it_gets_alone(
    zoo: tuple[ServerProcess, dict[str, Path]], model: str, send: str
) -> None:
    server, files = zoo
    requests = _requests()
    if send == "tritonclient":
        answers = triton_together(server.address, model, requests, ["y"])
    else:
        answers = ours_together(server.address, model, requests)
    assert_each_alone(files[FILES.get(model, model)], requests, answers, model)


def test_a_config_vouching_for_its_rows_is_batched_as_it_says(
    zoo: tuple[ServerProcess, dict[str, Path]],
) -> None:
    # The config's word wins: the four rows run as one batch, so each answer is the batch's share.
    server, files = zoo
    requests = _requests()
    answers = ours_together(server.address, "softmax_vouched", requests)
    batch = np.concatenate([r["x"] for r in requests])
    together = alone(files["softmax"], {"x": batch})["y"]
    got = np.concatenate([a["y"] for a in answers if not isinstance(a, Exception)])
    assert got.shape == together.shape and np.allclose(got, together), (got, together)
    first_alone = alone(files["softmax"], requests[0])["y"]
    assert not np.allclose(got[:1], first_alone)
