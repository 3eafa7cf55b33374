"""A latest-frame-wins frame's `frame_dropped` answer that its stream never wrote (its call ended
first) is counted in `sluiceway_stream_answers_dropped_total{reason="frame_dropped"}`, and the
stream-end line names it: it had been counted nowhere ("counted in neither"), so answers made and
not written could not be told from the counters.

Held by the batching rules, not by timing: the model keeps its order (preserve_ordering) and
queues a 1-row frame until 4 rows are queued (preferred size 4, a 60 s delay, no idle dispatch).
So "f0" (not latest-frame-wins) waits in the queue, "f1" is superseded by "f2" once "f2" is queued,
and f1's answer, made at once, waits unwritten behind f0's until the client cancels the call.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.metrics_page import metrics_lines
from tests.support.models import scale_model
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess, wait_until

HELD = """max_batch_size: 4
instance_group [ { count: 1 kind: KIND_CPU } ]
dynamic_batching {
  preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 60000000 preserve_ordering: true
}
parameters { key: "idle_dispatch" value: { string_value: "false" } }
"""
MODEL = "held_frames"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("stream-h19-unsent")
    write_model(repo, MODEL, scale_model(repo / "scale.onnx", 2.0), f'name: "{MODEL}"\n{HELD}')
    with ServerProcess("--model-repository", str(repo), "--shutdown-grace-s", "0") as process:
        yield process


def frame(rid: str, wins: bool) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(
        model_name=MODEL,
        id=rid,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 4])],
        raw_input_contents=[np.ones((1, 4), np.float32).tobytes()],
    )
    request.parameters["latest_frame_wins"].bool_param = wins
    return request


def counter(server: ServerProcess, name: str, label: str = "") -> float:
    """`name`'s sample for MODEL (with `label`, e.g. `reason="frame_dropped"`, when given; 0: absent)."""
    for line in metrics_lines(server):
        if line.startswith(name + "{") and f'model="{MODEL}"' in line and label in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_a_superseded_frames_answer_never_written_is_counted_and_named(server: ServerProcess) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(timeout=60)
        for rid, wins in (("f0", False), ("f1", True), ("f2", True)):
            await call.write(frame(rid, wins))
        # f1's answer is made once f2 is queued; it waits behind f0's (queued for 60 s).
        wait_until(lambda: counter(server, "sluiceway_frames_dropped_total") == 1, "f1 superseded")
        call.cancel()
    unsent = 'reason="frame_dropped"'
    wait_until(lambda: counter(server, "sluiceway_stream_answers_dropped_total", unsent) == 1, "f1 unsent")
    server.wait_for_output("ended with 1 answers not written (0 counted successes, 0 counted failures")
    assert "0 counted in neither: refusals of no model; 1 frames superseded" in server.output()
    assert f"1 in sluiceway_stream_answers_dropped_total{{{unsent}}}" in server.output()
    for reason in ("cancelled", "deadline", "stalled", "shutdown", "error"):  # counted once, there
        assert counter(server, "sluiceway_stream_answers_dropped_total", f'reason="{reason}"') == 0
