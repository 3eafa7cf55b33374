"""Latest-frame-wins over a real server: a stream that falls behind gets its older waiting frames
answered "dropped" (in their place, in order) and only the newest computed; counted on /metrics.

Frames are kept waiting by the batching rules, not by timing: the `held*` models queue a 1-row
frame until 4 rows are queued (preferred size 4, a 60 s delay), so every 1-row frame is still
queued when the next arrives, and a 4-row frame runs at once. The `slow` model runs every batch
for SLOW_S (fault injection); a frame is known to have started when ModelStatistics counts it out
of the queue. No test sleeps.
"""

from __future__ import annotations

import queue
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from clients import AsyncClient, FrameDropped
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from server.models.config import ConfigError, latest_frame_wins, parse_config, validate_config
from tests.support.dispatched import dispatched
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess, wait_until

BOUND_S = 60.0  # an upper bound on any answer here
SLOW_S = 2.0  # every run of `slow` takes this long: the frames after the first arrive meanwhile

HELD = """
max_batch_size: 4
dynamic_batching {{ preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 60000000 }}
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
parameters {{ key: "idle_dispatch" value: {{ string_value: "false" }} }}
{extra}
"""
ONE = "instance_group [ { count: 1 kind: KIND_CPU } ]\n"
LFW = 'parameters { key: "latest_frame_wins" value: { string_value: "true" } }'
SLOW = 'parameters { key: "fault_hang_every" value: { string_value: "1" } }\n' + (
    f'parameters {{ key: "fault_hang_s" value: {{ string_value: "{SLOW_S:g}" }} }}'
)
MODELS = {
    "held": HELD.format(extra=LFW),
    "held_plain": HELD.format(extra=""),
    "held_param": HELD.format(extra=""),  # latest-frame-wins by request parameter only
    "held_off": HELD.format(extra=LFW),  # ... turned off by request parameter
    # One instance (Triton's default would be 2): the frames after the first wait for its run.
    "slow": "max_batch_size: 4\ndynamic_batching { }\n" + ONE + LFW + "\n" + SLOW,
}


@pytest.fixture(scope="module")
def server(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("latest_frame")
    for name, config in MODELS.items():
        write_model(repo, name, demo_repo / "mlp" / "1" / "model.onnx", config)
    with ServerProcess("--model-repository", str(repo), "--allow-fault-injection") as process:
        yield process


@pytest.fixture()
def stub(server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def frame(model: str, name: str, rows: int = 1, wins: bool | None = None) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(
        model_name=model,
        id=name,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[rows, 64])],
        raw_input_contents=[np.full((rows, 64), 0.5, np.float32).tobytes()],
    )
    if wins is not None:
        req.parameters["latest_frame_wins"].bool_param = wins
    return req


def stream(
    stub: pb_grpc.GRPCInferenceServiceStub, frames: list[pb.ModelInferRequest]
) -> list[pb.ModelStreamInferResponse]:
    """Send `frames` on one stream, back to back; every answer, in the order received."""
    call = stub.ModelStreamInfer(iter(frames), timeout=BOUND_S)
    return [next(call) for _ in frames]


def outcome(answer: pb.ModelStreamInferResponse) -> str:
    response = answer.infer_response
    if answer.error_message:
        return "error"
    if response.parameters["frame_dropped"].bool_param:
        assert not response.outputs and not response.raw_output_contents, "a dropped frame has no outputs"
        return "dropped"
    assert list(response.outputs[0].shape)[1:] == [2]
    return "computed"


def dropped_total(server: ServerProcess, model: str) -> float:
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    match = re.search(rf'^sluiceway_frames_dropped_total{{[^}}]*model="{model}"[^}}]*}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def burst(model: str, wins: bool | None = None) -> list[pb.ModelInferRequest]:
    """Four 1-row frames (each queued, held for the preferred size) and a 4-row one (runs at once)."""
    return [frame(model, f"f{i}", 1, wins) for i in range(1, 5)] + [frame(model, "f5", 4, wins)]


@pytest.mark.parametrize(("model", "wins"), [("held", None), ("held_param", True)])
def test_older_waiting_frames_are_dropped_in_their_place(
    server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub, model: str, wins: bool | None
) -> None:
    # Deltas: other tests of this module's server may use the same model, in any order.
    dropped_before = dropped_total(server, model)
    (before,) = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model)).model_stats
    answers = stream(stub, burst(model, wins))
    assert [a.infer_response.id for a in answers] == ["f1", "f2", "f3", "f4", "f5"]
    assert [outcome(a) for a in answers] == ["dropped"] * 4 + ["computed"]
    assert dropped_total(server, model) - dropped_before == 4
    (stats,) = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model)).model_stats
    succeeded = stats.inference_stats.success.count - before.inference_stats.success.count
    failed = stats.inference_stats.fail.count - before.inference_stats.fail.count
    assert succeeded == 1 and failed == 0
    # The newest frame's 4 rows: nothing dropped was computed.
    assert stats.inference_count - before.inference_count == 4


@pytest.mark.parametrize(("model", "wins"), [("held_plain", None), ("held_off", False)])
def test_a_stream_without_the_setting_drops_nothing(
    server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub, model: str, wins: bool | None
) -> None:
    answers = stream(stub, burst(model, wins))
    assert sorted(a.infer_response.id for a in answers) == ["f1", "f2", "f3", "f4", "f5"]
    assert [outcome(a) for a in answers] == ["computed"] * 5
    assert dropped_total(server, model) == 0


def test_a_frame_that_started_is_computed(
    server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    sending: queue.Queue[pb.ModelInferRequest | None] = queue.Queue()

    def requests() -> Iterator[pb.ModelInferRequest]:
        while (item := sending.get()) is not None:
            yield item

    def left_queue() -> int:
        return dispatched(server.metrics_port, "slow")

    call = stub.ModelStreamInfer(requests(), timeout=BOUND_S)
    sending.put(frame("slow", "f1"))
    wait_until(lambda: left_queue() == 1, "frame f1 to leave the queue for its (slow) run")
    for name in ("f2", "f3", "f4"):  # all arrive while f1 runs: f2 and f3 are superseded
        sending.put(frame("slow", name))
    answers = [next(call) for _ in range(4)]
    sending.put(None)
    assert [a.infer_response.id for a in answers] == ["f1", "f2", "f3", "f4"]
    assert [outcome(a) for a in answers] == ["computed", "dropped", "dropped", "computed"]
    assert dropped_total(server, "slow") == 2


def test_a_refused_frame_supersedes_nothing(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    # A newer frame withdrew the older one on arrival, before its own checks: one refused for its
    # inputs (or its deadline) left no frame computed at all. Here f1 (1 row) waits for 3 more rows;
    # f2 is refused and leaves it queued; f3 (3 rows) completes the preferred batch with it.
    bad = frame("held", "f2")
    bad.inputs[0].name = "WRONG"
    answers = stream(stub, [frame("held", "f1"), bad, frame("held", "f3", 3)])
    assert [a.infer_response.id for a in answers] == ["f1", "f2", "f3"]
    assert [outcome(a) for a in answers] == ["computed", "error", "computed"]
    assert answers[1].error_message.startswith("INVALID_ARGUMENT: unexpected inference input 'WRONG'")


def test_a_bad_parameter_is_answered_and_the_stream_goes_on(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    bad = frame("held", "bad")
    bad.parameters["latest_frame_wins"].string_param = "yes"
    answers = stream(stub, [bad, frame("held", "ok", 4)])
    assert answers[0].error_message.startswith(
        "INVALID_ARGUMENT: parameter 'latest_frame_wins' must be a bool"
    )
    assert answers[0].infer_response.id == "bad"
    assert outcome(answers[1]) == "computed"


def test_a_bad_model_setting_is_refused_naming_it() -> None:
    config = parse_config(HELD.format(extra=LFW.replace('"true"', '"maybe"')), "config.pbtxt")
    with pytest.raises(
        ConfigError, match="parameters 'latest_frame_wins' must be 'true' or 'false', got 'maybe'"
    ):
        validate_config(config, "config.pbtxt")


@pytest.mark.parametrize(
    ("config", "kind"),
    [
        ("max_batch_size: 4\nsequence_batching { }\n", "sequence models"),
        ('platform: "ensemble"\nmax_batch_size: 4\n', "ensembles"),
    ],
)
def test_a_model_that_cannot_drop_frames_refuses_the_setting(config: str, kind: str) -> None:
    # It loaded and was silently ignored: every frame computed.
    with pytest.raises(ConfigError, match=f"parameters 'latest_frame_wins' is not supported for {kind}"):
        latest_frame_wins(parse_config(config + LFW, "config.pbtxt"), "config.pbtxt")
    off = parse_config(config + LFW.replace('"true"', '"false"'), "config.pbtxt")
    assert latest_frame_wins(off, "config.pbtxt") is False  # what it does anyway


@pytest.mark.parametrize(
    ("model", "session_wins", "frame_wins"), [("held_param", True, None), ("held_param", None, True)]
)
async def test_our_client_sends_the_parameter_and_tells_a_dropped_frame(
    server: ServerProcess, model: str, session_wins: bool | None, frame_wins: bool | None
) -> None:
    # Our client had no way to send the parameter, and a dropped frame came back as a success with
    # no outputs: the README's `result.unwrap()["scores"]` raised KeyError (a tester, session 49).
    features = {"features": np.full((1, 64), 0.5, np.float32)}
    async with (
        AsyncClient(server.address) as client,
        client.stream(model, latest_frame_wins=session_wins) as session,
    ):
        for i in range(1, 5):  # each 1-row frame waits for 4 rows: the next one supersedes it
            await session.send(features, f"c{i}", latest_frame_wins=frame_wins)
        await session.send(
            {"features": np.full((4, 64), 0.5, np.float32)}, "c5", latest_frame_wins=frame_wins
        )
        await session.done_sending()
        results = [result async for result in session]
    assert [(r.request_id, r.dropped) for r in results] == [(f"c{i}", i < 5) for i in range(1, 6)]
    for dropped in results[:4]:
        assert dropped.outputs is None and isinstance(dropped.error, FrameDropped)
        with pytest.raises(FrameDropped, match="superseded"):
            dropped.unwrap()
    assert results[4].unwrap()["scores"].shape == (4, 2)
