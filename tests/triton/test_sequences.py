"""tritonclient's sequence arguments (sequence_id / sequence_start / sequence_end), unchanged,
against a sluiceway model with implicit state: unary and streaming, integer and string ids."""

from __future__ import annotations

import queue
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.support import sequence_models as sm
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess


@pytest.fixture(scope="module")
def seq_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("triton_seq_repo")
    acc = sm.accumulator_model(tmp_path_factory.mktemp("triton_seq_files") / "acc.onnx")
    write_model(repo, "accumulate", acc, sm.accumulator_config())
    with ServerProcess("--model-repository", str(repo)) as server:
        yield server


def x(value: float) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.full((1, 4), value, np.float32))
    return [tensor]


@pytest.mark.parametrize("sid", [17, "session-17"])
def test_unary_infer_carries_state_through_a_sequence(seq_server: ServerProcess, sid: int | str) -> None:
    client = grpcclient.InferenceServerClient(url=seq_server.address)
    assert "sequence" in client.get_server_metadata(as_json=True)["extensions"]
    sums = [
        client.infer(
            "accumulate", x(v), sequence_id=sid, sequence_start=v == 1, sequence_end=v == 4
        ).as_numpy("out")[0, 0]
        for v in (1, 2, 3, 4)
    ]
    assert sums == [1, 3, 6, 10]
    with pytest.raises(InferenceServerException) as info:
        client.infer("accumulate", x(1), sequence_id=sid)  # ended
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT" and "not live" in info.value.message()


def test_stream_infer_keeps_each_sequences_state_and_order(seq_server: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(url=seq_server.address)
    answers: queue.Queue[tuple[object, object]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for step in range(1, 11):
            for sid, scale in ((101, 1.0), ("b-102", 10.0)):
                client.async_stream_infer(
                    "accumulate",
                    x(scale * step),
                    request_id=f"{sid}/{step}",
                    sequence_id=sid,
                    sequence_start=step == 1,
                    sequence_end=step == 10,
                )
        got = [answers.get(timeout=60) for _ in range(20)]
    finally:
        client.stop_stream()
    assert [error for _, error in got if error is not None] == []
    out = {r.get_response().id: r.as_numpy("out")[0, 0] for r, _ in got}  # type: ignore[attr-defined]
    for step in range(1, 11):
        assert out[f"101/{step}"] == step * (step + 1) / 2
        assert out[f"b-102/{step}"] == 10 * step * (step + 1) / 2
