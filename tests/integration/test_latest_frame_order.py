"""Latest-frame-wins frames on one stream: each model version keeps its own answer order, and a
frame the queue refuses (its deadline has passed) supersedes nothing.

The `held` model queues a 1-row frame until 4 rows are queued (preferred size 4, a 60 s delay), so
a frame stays waiting for as long as a test needs, without timing; `quick` runs every frame at once.
No test sleeps, and none asserts a duration.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess

# Bounds the reads of the stream: an answer that waits for another model's held frame never comes,
# and the call then ends DEADLINE_EXCEEDED instead of hanging the test.
BOUND_S = 20.0

LFW = 'parameters { key: "latest_frame_wins" value: { string_value: "true" } }'
MODELS = {
    "held": f"""
max_batch_size: 4
dynamic_batching {{ preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 60000000 }}
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
parameters {{ key: "idle_dispatch" value: {{ string_value: "false" }} }}
{LFW}
""",
    "quick": f"max_batch_size: 4\ndynamic_batching {{ }}\n{LFW}\n",
}


@pytest.fixture(scope="module")
def server(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("latest_frame_order")
    for name, config in MODELS.items():
        write_model(repo, name, demo_repo / "mlp" / "1" / "model.onnx", config)
    with ServerProcess("--model-repository", str(repo)) as process:
        yield process


@pytest.fixture()
def stub(server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def frame(model: str, name: str, rows: int = 1, timeout_us: int | None = None) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(
        model_name=model,
        id=name,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[rows, 64])],
        raw_input_contents=[np.full((rows, 64), 0.5, np.float32).tobytes()],
    )
    if timeout_us is not None:
        req.parameters["timeout"].int64_param = timeout_us
    return req


def outcome(answer: pb.ModelStreamInferResponse) -> str:
    if answer.error_message:
        return answer.error_message.split(":")[0]
    if answer.infer_response.parameters["frame_dropped"].bool_param:
        return "dropped"
    return "computed"


def test_a_frame_of_one_model_does_not_wait_for_another_models_earlier_frame(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    # `held` f1 waits in its queue until the stream ends; `quick` g1, sent after it, is answered
    # first. One order for every model on the stream had held g1 behind f1.
    sending: queue.Queue[pb.ModelInferRequest | None] = queue.Queue()

    def requests() -> Iterator[pb.ModelInferRequest]:
        while (item := sending.get()) is not None:
            yield item

    call = stub.ModelStreamInfer(requests(), timeout=BOUND_S)
    try:
        sending.put(frame("held", "f1"))
        sending.put(frame("quick", "g1"))
        first = next(call)
        assert (first.infer_response.id, outcome(first)) == ("g1", "computed")
        # The same model's frames still keep their order: g2 supersedes nothing computed, g3 is
        # answered after it.
        sending.put(frame("quick", "g2"))
        sending.put(frame("quick", "g3"))
        assert [next(call).infer_response.id for _ in range(2)] == ["g2", "g3"]
    finally:
        call.cancel()  # f1 is still queued: never computed
        sending.put(None)


def test_a_frame_refused_for_its_passed_deadline_supersedes_nothing(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    # f2's 1 us `timeout` has passed when it reaches the queue: refused there (DEADLINE_EXCEEDED,
    # never computed), it leaves f1 queued, and f3's 3 rows complete the preferred batch with it.
    # It had withdrawn f1 on passing its input checks: no frame of the three but f3 computed, and
    # f3 alone then waited for the batch to fill.
    frames = [frame("held", "f1"), frame("held", "f2", timeout_us=1), frame("held", "f3", 3)]
    call = stub.ModelStreamInfer(iter(frames), timeout=BOUND_S)
    try:
        answers = [next(call) for _ in frames]
    finally:
        call.cancel()
    assert [a.infer_response.id for a in answers] == ["f1", "f2", "f3"]
    assert [outcome(a) for a in answers] == ["computed", "DEADLINE_EXCEEDED", "computed"]
    assert "before the request was queued" in answers[1].error_message
