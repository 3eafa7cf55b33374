"""A dynamically quantized model served batched, on a real server: four requests of one row
coalesced into one run, the first 40x the others. Per batch (the model as quantize_dynamic writes
it, Triton's behaviour, kept here by `dynamic_quantization: per_batch`), the outlier changed the
other requests' answers, OK. Per row (the default where requests batch), each request gets exactly
what onnxruntime gives the model for it alone (server/backends/row_quantization.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.support.dynamic_int8 import dynamic_int8, float_mlp, rows_with_an_outlier
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess
from tests.support.zoo_checks import BATCH_OF_FOUR_ROWS, alone, ours_together, triton_together

PER_BATCH = (
    BATCH_OF_FOUR_ROWS + 'parameters { key: "dynamic_quantization" value { string_value: "per_batch" } }\n'
)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    files = tmp_path_factory.mktemp("rowq-files")
    model = dynamic_int8(float_mlp(files / "float.onnx"), files / "int8.onnx")
    repo = tmp_path_factory.mktemp("rowq-repo")
    write_model(repo, "per_row", model, BATCH_OF_FOUR_ROWS)
    write_model(repo, "per_batch", model, PER_BATCH)
    with ServerProcess("--model-repository", str(repo)) as server:
        yield server, model


def _requests() -> list[dict[str, np.ndarray]]:
    x = rows_with_an_outlier(4)
    return [{"x": x[i : i + 1]} for i in range(4)]


def _send(server: ServerProcess, model: str, send: str) -> list[np.ndarray]:
    requests = _requests()
    if send == "tritonclient":
        answers = triton_together(server.address, model, requests, ["y"])
    else:
        answers = ours_together(server.address, model, requests)
    for answer in answers:
        assert not isinstance(answer, Exception), answer
    return [a["y"] for a in answers]  # type: ignore[index]


@pytest.mark.parametrize("send", ["tritonclient", "ours"])
def test_per_row_each_request_gets_exactly_its_answer_alone(
    served: tuple[ServerProcess, Path], send: str
) -> None:
    server, model = served
    got = _send(server, "per_row", send)
    for k, request in enumerate(_requests()):
        assert np.array_equal(got[k], alone(model, request)["y"]), k


@pytest.mark.parametrize("send", ["tritonclient", "ours"])
def test_per_batch_the_outlier_changes_the_others_answers(
    served: tuple[ServerProcess, Path], send: str
) -> None:
    server, model = served
    got = _send(server, "per_batch", send)
    changed = [not np.array_equal(got[k], alone(model, r)["y"]) for k, r in enumerate(_requests())]
    assert changed[0] is False and any(changed[1:]), changed  # the outlier's own range is the batch's
