"""README claims of sluiceway-loadtest that test_loadtest.py leaves out: the refusal of targets off
this machine, `report`, `--max-requests`, CLIENT_BACKLOG, `--input`, `--shape`, `--source sensor`
and `crosscheck`.

What a run sent is read from the server (ModelStatistics, the response cache), not trusted from the
harness's own report.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import loadtest.crosscheck
import loadtest.inputs
import loadtest.runner
from loadtest.cli import build_parser, main, targets_from
from loadtest.scenario import Scenario, Target
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.once import LOADTEST_RUNS, once_per_command
from tests.support.perf_analyzer_tool import usable_perf_analyzer
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess

# Alone, after the parallel phase (scripts/test.sh): request counts and rates of real load runs.
pytestmark = [pytest.mark.serial, once_per_command(LOADTEST_RUNS)]

SHORT = ["--duration-s", "1", "--warmup-s", "0", "--quiet"]
# A lone 1-row request waits for 3 more rows or 60 s, so it stays unanswered until the model's
# 1.5 s queue timeout, when the server answers it (well before a 5 s client deadline).
HELD = """
max_batch_size: 4
dynamic_batching {
  preferred_batch_size: [ 4 ]
  max_queue_delay_microseconds: 60000000
  default_queue_policy { default_timeout_microseconds: 1500000 }
}
parameters { key: "idle_dispatch" value: { string_value: "false" } }
"""


def window_model(path: Path, width: int) -> Path:
    """x FP32 [N, L] -> y FP32 [N*L/width, width]: runs only when L is a multiple of `width`."""
    shape = numpy_helper.from_array(np.array([-1, width], dtype=np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "window",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "L"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])],
        [shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def server(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """mlp; `held` (the mlp, holding lone requests); `cached` (the mlp with the response cache);
    `window` (a variable second dimension that must be a multiple of 5)."""
    repo = tmp_path_factory.mktemp("loadtest-claims-repo")
    files = tmp_path_factory.mktemp("loadtest-claims-files")
    mlp = demo_repo / "mlp" / "1" / "model.onnx"
    config = "\n".join(
        line
        for line in (demo_repo / "mlp" / "config.pbtxt").read_text().splitlines()
        if not line.startswith("name:")
    )
    write_model(repo, "mlp", mlp, config)
    write_model(repo, "held", mlp, HELD)
    write_model(repo, "cached", mlp, config + "\nresponse_cache { enable: true }\n")
    write_model(
        repo,
        "window",
        window_model(files / "window.onnx", width=5),
        "max_batch_size: 8\ndynamic_batching { }\n",
    )
    with ServerProcess("--model-repository", str(repo), "--response-cache-bytes", "1000000") as process:
        yield process


@pytest.fixture()
def stub(server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def statistics(stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> pb.ModelStatistics:
    (stats,) = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=30).model_stats
    return stats


def run(out: Path, *args: str) -> dict[str, Any]:
    """No plots (~1 CPU s each): the report's test redraws and checks them from results.json."""
    assert main([*args, *SHORT, "--out", str(out), "--no-plots"]) == 0
    results: dict[str, Any] = json.loads((out / "results.json").read_text())
    return results


# -- targets off this machine -------------------------------------------------------------------------


@pytest.fixture()
def no_traffic(monkeypatch: pytest.MonkeyPatch) -> None:
    """Anything that would open a connection, resolve a name or start the load fails the test."""

    def refused(*args: object, **kwargs: object) -> NoReturn:
        raise AssertionError(f"the load test tried to reach a target: {args!r}")

    monkeypatch.setattr(grpc, "insecure_channel", refused)
    monkeypatch.setattr(grpc.aio, "insecure_channel", refused)
    monkeypatch.setattr(socket, "create_connection", refused)
    monkeypatch.setattr(socket, "gethostbyname", refused)
    monkeypatch.setattr(socket.socket, "connect", refused)
    monkeypatch.setattr(loadtest.runner, "run_scenario", refused)
    monkeypatch.setattr(loadtest.inputs, "fetch_metadata", refused)
    monkeypatch.setattr(loadtest.crosscheck, "run_perf_analyzer", refused)


# 10.255.255.1 is only ever an argument that must be refused: nothing is sent to it (see no_traffic).
REMOTE = "10.255.255.1:8001"


@pytest.mark.usefixtures("no_traffic")
@pytest.mark.parametrize(
    "where",
    [["--target", REMOTE], ["--compare", f"a=127.0.0.1:1,b={REMOTE}/mlp"]],
    ids=["target", "compare"],
)
def test_a_target_off_this_machine_is_refused_before_any_traffic(
    where: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*where, "--concurrency", "1", *SHORT, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "10.255.255.1:8001 is not on this machine (use --allow-remote)" in err
    assert not (tmp_path / "results.json").exists()


@pytest.mark.usefixtures("no_traffic")
def test_server_metrics_reach_every_model_of_the_first_targets_server() -> None:
    """The GPU check compares three models of one server: only the first had read /metrics, so the
    others' padded shape changes (cuDNN plan builds) went unreported."""
    url = "http://127.0.0.1:9/metrics"
    compare = "a=127.0.0.1:1/resnet,b=127.0.0.1:1/mlp,c=127.0.0.1:2/mlp"
    args = build_parser().parse_args(["--compare", compare, "--server-metrics", url])
    assert [t.metrics_url for t in targets_from(args, None)] == [url, url, None]


@pytest.mark.usefixtures("no_traffic")
def test_allow_remote_accepts_such_a_target_and_crosscheck_refuses_it() -> None:
    args = build_parser().parse_args(["--target", REMOTE, "--allow-remote"])
    (target,) = targets_from(args, None)  # accepted (this only parses: nothing is sent)
    assert target.address == REMOTE
    for local in ("127.0.0.1:1", "localhost:1", "[::1]:1"):
        assert targets_from(build_parser().parse_args(["--target", local]), None)[0].address == local
    with pytest.raises(SystemExit, match="must be on this machine"):
        loadtest.crosscheck.main(["--target", REMOTE])


# -- report ---------------------------------------------------------------------------------------


def test_report_redraws_the_page_and_plots_from_results_json(server: ServerProcess, tmp_path: Path) -> None:
    first = tmp_path / "first"
    results = run(first, "--target", server.address, "--concurrency", "1", "--max-requests", "50")
    # Edit the document: the redrawn page must show what results.json says now.
    results["results"][0]["target"] = "edited-target"
    saved = tmp_path / "saved" / "results.json"
    saved.parent.mkdir()
    saved.write_text(json.dumps(results))
    for out, argv in (
        (saved.parent, [str(saved)]),
        (tmp_path / "elsewhere", [str(saved), "--out", str(tmp_path / "elsewhere")]),
    ):
        assert main(["report", *argv]) == 0
        for name in ("latency_vs_throughput.png", "goodput_vs_offered.png", "latency_cdf.png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        page = (out / "report.html").read_text()
        assert page.count("data:image/png;base64,") == 3
        assert "edited-target" in page
        assert json.loads((out / "results.json").read_text()) == results


# -- --max-requests and CLIENT_BACKLOG --------------------------------------------------------------


def test_max_requests_bounds_every_kind_of_step(server: ServerProcess, tmp_path: Path) -> None:
    # Unbounded, each of these would send 50 to hundreds of requests in its 1 s window.
    results = run(
        tmp_path, "--target", server.address, "--max-requests", "7",
        "--concurrency", "2", "--rate", "200", "--arrival", "constant", "--streams", "1", "--fps", "50",
    )  # fmt: skip
    entries = results["results"]
    assert [e["step"]["mode"] for e in entries] == ["closed", "open", "stream"]
    for entry in entries:
        assert entry["requests"] == 7, (entry["step"], entry["requests"])
        assert entry["ok"] == 7 and entry["errors"] == {}, entry["errors"]
        # Rates over the time the 7 took, not the whole 1 s window (which read as 7/s).
        assert entry["duration_s"] < 1.0 and entry["offered_rps"] > 7.0, entry


def test_warm_up_does_not_use_up_max_requests(server: ServerProcess, tmp_path: Path) -> None:
    """Warm-up requests counted toward --max-requests: with a 1 s warm-up none were measured."""
    args = ["--target", server.address, "--model", "mlp", "--concurrency", "1", "--max-requests", "20"]
    args += ["--duration-s", "1", "--warmup-s", "0.5", "--quiet", "--out", str(tmp_path), "--no-plots"]
    assert main(args) == 0
    (entry,) = json.loads((tmp_path / "results.json").read_text())["results"]
    assert entry["requests"] == 20 and entry["ok"] == 20, entry


def test_an_open_loop_counts_client_backlog_beyond_max_in_flight(
    server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub, tmp_path: Path
) -> None:
    # `held` keeps each lone request until its queue timeout (1.5 s, beyond the 1 s window): the
    # first two sent stay in flight, and every later arrival finds 2 unanswered and is not sent.
    before = statistics(stub, "held")
    results = run(
        tmp_path, "--target", server.address, "--model", "held", "--rate", "20", "--arrival", "constant",
        "--max-in-flight", "2", "--deadline-ms", "5000",
    )  # fmt: skip
    (entry,) = results["results"]
    assert entry["requests"] >= 10
    assert entry["errors"]["CLIENT_BACKLOG"] == entry["requests"] - 2, entry["errors"]
    assert entry["ok"] + sum(entry["errors"].values()) == entry["requests"]
    # The two sent end at their queue timeout: UNAVAILABLE, Triton's code for it.
    assert set(entry["errors"]) <= {"CLIENT_BACKLOG", "UNAVAILABLE"}, entry["errors"]
    after = statistics(stub, "held")
    # Only the two sent reached the server, which answered them (at their queue timeout).
    sent = after.inference_stats.success.count + after.inference_stats.fail.count
    assert sent - before.inference_stats.success.count - before.inference_stats.fail.count == 2


# -- inputs: --input, --shape, --source sensor -------------------------------------------------------


def test_input_files_are_what_is_sent(
    server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub, tmp_path: Path
) -> None:
    # One row without its batch dimension: tiled to --batch-size. Every request carries it, so
    # the response cache of `cached` computes it once and answers the rest, our own included.
    features = np.random.default_rng(42).standard_normal(64).astype(np.float32)
    np.save(tmp_path / "features.npy", features)
    before = statistics(stub, "cached")
    results = run(
        tmp_path, "--target", server.address, "--model", "cached", "--concurrency", "1",
        "--max-requests", "10", "--input", f"features={tmp_path / 'features.npy'}",
    )  # fmt: skip
    (entry,) = results["results"]
    assert entry["ok"] == 10 and entry["errors"] == {}
    middle = statistics(stub, "cached")
    assert middle.inference_count - before.inference_count == 1  # computed once
    assert middle.inference_stats.cache_hit.count - before.inference_stats.cache_hit.count == 9
    request = pb.ModelInferRequest(
        model_name="cached",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[1, 64])],
        raw_input_contents=[features.reshape(1, 64).tobytes()],
    )
    stub.ModelInfer(request, timeout=30)
    after = statistics(stub, "cached")
    assert after.inference_stats.cache_hit.count == middle.inference_stats.cache_hit.count + 1
    assert after.inference_count == middle.inference_count


def test_shape_sets_the_dimensions_of_an_input(
    server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub, tmp_path: Path
) -> None:
    # `window` has x [-1, -1]; without --shape the second dimension would be 1 and every run fail.
    # As perf_analyzer's: --shape names the dims after the batch dim, --batch-size the rows.
    before = statistics(stub, "window")
    results = run(
        tmp_path, "--target", server.address, "--model", "window", "--concurrency", "1",
        "--max-requests", "6", "--shape", "x=5", "--batch-size", "3",
    )  # fmt: skip
    (entry,) = results["results"]
    assert entry["ok"] == 6 and entry["errors"] == {}, entry["errors"]
    after = statistics(stub, "window")
    assert after.inference_count - before.inference_count == 6 * 3  # 3 rows a request


def test_source_sensor_sends_random_walk_readings(server: ServerProcess, tmp_path: Path) -> None:
    target = Target("sluiceway", server.address, "mlp")

    def frames(source: str) -> np.ndarray:
        scenario = Scenario(targets=(target,), steps=(), source=source)
        payloads = loadtest.inputs.payloads_for(target, scenario, "stream")
        rows = [pb.ModelInferRequest.FromString(p).raw_input_contents[0] for p in payloads]
        return np.stack([np.frombuffer(r, dtype=np.float32) for r in rows])

    walk, noise = frames("sensor"), frames("random")
    assert walk.shape == noise.shape == (loadtest.inputs.STREAM_FRAMES, 64)
    # A random walk moves a little each frame (steps of sd 0.05); random data jumps (sd ~0.4).
    steps = np.diff(walk, axis=0)
    assert 0.03 < steps.std() < 0.07, steps.std()
    assert np.diff(noise, axis=0).std() > 0.3
    # Streams pick it by input rank: the mlp's flat vector gets sensor readings.
    assert loadtest.inputs.pick_source("auto", "stream", {"features": (1, 64)}) == "sensor"
    # And the harness runs with it.
    results = run(
        tmp_path, "--target", server.address, "--streams", "1", "--fps", "20", "--source", "sensor",
        "--max-requests", "10",
    )  # fmt: skip
    (entry,) = results["results"]
    assert entry["ok"] == 10 and entry["errors"] == {}, entry["errors"]


# -- crosscheck -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def perf_analyzer() -> Path:
    tool = usable_perf_analyzer()  # as crosscheck finds it: $SLUICEWAY_PERF_ANALYZER, ../shared/tools, PATH
    if isinstance(tool, str):
        pytest.skip(tool)
    return tool


def test_crosscheck_compares_with_perf_analyzer_and_fails_beyond_the_tolerance(
    perf_analyzer: Path, server: ServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    common = [
        "--target", server.address, "--concurrency", "2", "--rounds", "1",
        "--duration-s", "1", "--warmup-s", "0.2", "--perf-analyzer", str(perf_analyzer),
    ]  # fmt: skip
    # Any two measurements are within 1000%; no two are exactly equal (a tolerance of 0).
    assert loadtest.crosscheck.main([*common, "--tolerance", "10"]) == 0
    table = capsys.readouterr().out
    (row,) = [line for line in table.splitlines() if line.startswith("| 2 |")]
    ours, theirs, ratio = (float(cell.split()[0]) for cell in row.split("|")[2:5])
    assert ours > 0 and theirs > 0 and ratio == pytest.approx(ours / theirs, rel=0.01)
    assert "FAIL" not in row
    assert loadtest.crosscheck.main([*common, "--tolerance", "0"]) == 1
    (row,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 2 |")]
    assert "FAIL" in row


def test_streams_the_server_refuses_count_their_frames_as_errors(demo_repo: Path, tmp_path: Path) -> None:
    """Two of three streams refused (max_streams 1) had vanished from the report: one stream's
    frames offered, no error. The plan's frames are offered and the refused ones are errors."""
    with ServerProcess("--model-repository", str(demo_repo), "--max-streams", "1") as server:
        results = run(
            tmp_path, "--target", server.address, "--model", "mlp", "--streams", "3", "--fps", "20",
            "--warmup-s", "0",
        )  # fmt: skip
    (entry,) = results["results"]
    refused = entry["errors"].get("RESOURCE_EXHAUSTED", 0)
    assert refused >= entry["ok"], entry["errors"]  # two streams' frames, against one's answered
    assert "max_streams=1" in entry["error_messages"]["RESOURCE_EXHAUSTED"]
    assert entry["ok"] + sum(entry["errors"].values()) == entry["requests"]


def test_sigterm_stops_the_spawned_server_too(tmp_path: Path) -> None:
    """SIGTERM (a timeout, a CI cancel) killed the harness and left its spawned server running."""
    import signal
    import sys

    from tests.support.procfs import alive, children_of
    from tests.support.server_process import REPO_ROOT, wait_until

    harness = subprocess.Popen(
        [sys.executable, "-m", "loadtest", "--spawn-server", "--model", "mlp", "--concurrency", "1",
         "--duration-s", "60", "--warmup-s", "0", "--quiet"],
        cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_until(
            lambda: any("server" in _cmdline(c) for c in children_of(harness.pid)), "the spawned server"
        )
        children = children_of(harness.pid)
        harness.send_signal(signal.SIGTERM)
        assert harness.wait(60) == 130
        wait_until(lambda: not any(alive(c) for c in children), "its children to exit", timeout_s=30)
    finally:
        harness.kill()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_an_interrupted_run_keeps_the_steps_it_measured(tmp_path: Path) -> None:
    """Ctrl-C (or SIGTERM) threw away every step, those already measured too."""
    import signal
    import sys

    from tests.support.server_process import REPO_ROOT

    harness = subprocess.Popen(
        [sys.executable, "-m", "loadtest", "--spawn-server", "--model", "mlp", "--concurrency", "1,2,4",
         "--duration-s", "1", "--warmup-s", "0", "--out", str(tmp_path), "--no-plots"],
        cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert harness.stderr is not None
        for line in harness.stderr:  # the progress lines: the first step's means it was measured
            if "closed c=1 " in line:
                break
        harness.send_signal(signal.SIGTERM)
        assert harness.wait(60) == 130
    finally:
        harness.kill()
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["interrupted"] is True
    assert results["results"][0]["step"]["label"] == "closed c=1"
