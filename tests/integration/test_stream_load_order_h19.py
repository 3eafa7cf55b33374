"""Over a real server: one stream sends a sequence to a lazy accumulator model that is not loaded,
its start and first continuations before the load ends and the rest (and its end) after, first on
a model never loaded, then on the same model evicted by another's load (memory budget): every
answer is OK with the exact running sum, and the end releases the sequence. Frames read just
after a load ended had overtaken those still waiting for it (README "Cold starts"; the boundary
itself is pinned deterministically by tests/unit/test_stream_load_order_h19.py)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.sequence_models import accumulator_config, accumulator_model
from tests.support.server_process import ServerProcess, wait_until

LAZY = 'parameters { key: "lazy_load" value { string_value: "true" } }\n'
FRAMES = 12
BEFORE = 4  # frames sent before the load is seen to end


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("repo")
    for name in ("acc_a", "acc_b"):
        (repo / name / "1").mkdir(parents=True)
        accumulator_model(repo / name / "1" / "model.onnx")
        (repo / name / "config.pbtxt").write_text(accumulator_config() + LAZY)
    # Room for one of the two: each load evicts the other (once its footprint is measured).
    process = ServerProcess("--model-repository", str(repo), "--model-memory-budget-mb", "2").start()
    try:
        yield process
    finally:
        process.terminate()


def frame(model: str, sid: int, i: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, id=str(i))
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.full((1, 4), i + 1, np.float32).tobytes())
    request.parameters["sequence_id"].int64_param = sid
    request.parameters["sequence_start"].bool_param = i == 0
    request.parameters["sequence_end"].bool_param = i == FRAMES - 1
    return request


def ready(stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> bool:
    return bool(stub.ModelReady(pb.ModelReadyRequest(name=model), timeout=10).ready)  # never loads it


def sequence_across_load(
    stub: pb_grpc.GRPCInferenceServiceStub, model: str, sid: int
) -> list[tuple[str, object]]:
    """Send the sequence on one stream: BEFORE frames, then (once the model is ready) the rest."""
    outbox: queue.Queue[pb.ModelInferRequest | None] = queue.Queue()

    def requests() -> Iterator[pb.ModelInferRequest]:
        while (request := outbox.get()) is not None:
            yield request

    answers: list[tuple[str, object]] = []
    done = threading.Event()

    def read() -> None:
        try:
            for answer in stub.ModelStreamInfer(requests(), timeout=60):
                got = answer.infer_response
                if answer.error_message:
                    answers.append((got.id, answer.error_message))
                else:
                    answers.append((got.id, float(np.frombuffer(got.raw_output_contents[0], np.float32)[0])))
        finally:
            done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    for i in range(BEFORE):
        outbox.put(frame(model, sid, i))
    wait_until(lambda: ready(stub, model), f"{model} loaded by the stream's first frames")
    for i in range(BEFORE, FRAMES):
        outbox.put(frame(model, sid, i))
    outbox.put(None)
    assert done.wait(60)
    return answers


def test_a_streamed_sequence_across_a_lazy_load_gets_every_sum_in_order(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        # acc_a never loaded; then acc_b (never loaded, evicting acc_a); then acc_a again (evicted).
        for sid, model in enumerate(("acc_a", "acc_b", "acc_a"), start=7):
            if model == "acc_a" and sid > 7:
                wait_until(lambda: not ready(stub, "acc_a"), "acc_a evicted by acc_b's load")
            answers = sequence_across_load(stub, model, sid)
            expected = [(str(i), float(sum(range(1, i + 2)))) for i in range(FRAMES)]
            assert sorted(answers, key=lambda a: int(a[0])) == expected, (model, answers)
            # Its end was answered in its turn: the sequence is released, a continuation refused.
            with pytest.raises(grpc.RpcError) as refused:
                stub.ModelInfer(frame(model, sid, 1), timeout=10)
            assert "it ended" in str(refused.value.details())
