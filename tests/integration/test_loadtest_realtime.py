"""`sluiceway-loadtest realtime` against a real server: paced streams, every chunk accounted for,
sequence and latest-frame-wins parameters on the wire. Short steps (1 s windows), small loads; no
assertion on timing (that is what BENCHMARKS.md section 11 measures)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from loadtest.realtime import main
from loadtest.realtime_worker import RealtimePlan, _suffixes
from loadtest.worker import with_id
from protos import grpc_service_pb2 as pb
from tests.support.repositories import demo_repository
from tests.support.server_process import ServerProcess

SHORT = ["--duration-s", "1", "--warmup-s", "0.3", "--drain-s", "5", "--processes", "2"]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess("--model-repository", str(demo_repository())) as process:
        yield process


def run(server: ServerProcess, tmp_path: Path, *args: str) -> list[dict[str, Any]]:
    assert main(["--target", server.address, *args, *SHORT, "--out", str(tmp_path)]) == 0
    steps: list[dict[str, Any]] = json.loads((tmp_path / "realtime.json").read_text())
    return steps


def test_every_chunk_of_every_stream_is_accounted_for(server: ServerProcess, tmp_path: Path) -> None:
    assert server.process is not None
    pid = str(server.process.pid)
    (step,) = run(server, tmp_path, "--model", "mlp", "--rate", "20", "--streams", "3", "--server-pid", pid)
    streams = step["per_stream"]
    assert sorted(s["index"] for s in streams) == [0, 1, 2]  # split over both processes
    for s in streams:
        assert s["scheduled"] == pytest.approx(20, abs=1)  # 1 s at 20 chunks/s, by the schedule
        assert s["computed"] + s["dropped"] + sum(s["errors"].values()) == s["scheduled"]
        assert s["errors"] == {} and s["dropped"] == 0
        assert 0 < s["p50_us"] <= s["p99_us"] <= s["max_us"]
    assert step["offered_per_s"] == pytest.approx(60, abs=3)
    assert step["real_time_streams"] == sum(s["real_time"] for s in streams)
    # The server's CPU over the window, per computed chunk: it served ~60 chunks in it.
    assert step["server_cpu_cores"] > 0
    assert step["server_cpu_us_per_chunk"] == pytest.approx(step["server_cpu_cores"] * 1e6 / 60, rel=0.1)


def test_latest_frame_wins_frames_are_computed_or_dropped(server: ServerProcess, tmp_path: Path) -> None:
    (step,) = run(server, tmp_path, "--preset", "camera", "--rate", "15", "--streams", "2")
    assert step["server_cpu_cores"] is None  # no --server-pid: not measured
    for s in step["per_stream"]:
        assert s["errors"] == {}
        assert s["computed"] > 0 and s["computed"] + s["dropped"] == s["scheduled"]


def test_chunk_parameters_ride_on_the_preserialized_request() -> None:
    request = pb.ModelInferRequest(model_name="m", inputs=[pb.ModelInferRequest.InferInputTensor(name="x")])
    request.raw_input_contents.append(np.zeros(4, np.float32).tobytes())
    plan = RealtimePlan("127.0.0.1:1", 1, 0, 10.0, (), 0.0, 0.0, 1.0, 1.0, True, 500, True)
    first, middle, last = _suffixes(plan, 507)
    sent = [
        pb.ModelInferRequest.FromString(with_id(request.SerializeToString() + s, "7-1"))
        for s in (first, middle, last)
    ]
    for message in sent:
        assert message.id == "7-1" and message.model_name == "m" and len(message.raw_input_contents) == 1
        assert message.parameters["sequence_id"].uint64_param == 507
        assert message.parameters["latest_frame_wins"].bool_param
    assert [m.parameters["sequence_start"].bool_param for m in sent] == [True, False, False]
    assert [m.parameters["sequence_end"].bool_param for m in sent] == [False, False, True]
