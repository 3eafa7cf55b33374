"""sluiceway-loadtest against a real server: short steps, small loads, every mode and the report.

Each run spawns its client worker processes and measures 1 s windows, so the whole module takes
about half a minute on two cores. Plots are drawn where they are checked only.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadtest.cli import main
from tests.support.once import LOADTEST_RUNS, once_per_command
from tests.support.repositories import demo_repository
from tests.support.server_process import REPO_ROOT, ServerProcess

# Alone, after the parallel phase (scripts/test.sh): rate windows of real load runs.
pytestmark = [pytest.mark.serial, once_per_command(LOADTEST_RUNS)]

SHORT = ["--duration-s", "1", "--warmup-s", "0.3", "--quiet"]
ENTRY_KEYS = {
    "step", "target", "rounds", "duration_s", "offered_rps", "throughput_rps", "throughput_ips",
    "goodput_rps", "requests", "ok", "errors", "latency_us", "client_lag_us", "server", "client_cpu",
    "cdf", "ratios", "throughput_per_round", "error_messages",
}  # fmt: skip


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess("--model-repository", str(demo_repository())) as process:
        yield process


def run(tmp_path: Path, *args: str, plots: bool = False) -> dict[str, Any]:
    """Plots only where a test checks them (~1 CPU s each; tests/unit/test_loadtest_plots.py draws
    every kind of entry)."""
    assert main([*args, *SHORT, "--out", str(tmp_path), *([] if plots else ["--no-plots"])]) == 0
    return json.loads((tmp_path / "results.json").read_text())


def assert_sane(entry: dict[str, Any]) -> None:
    assert entry.keys() >= ENTRY_KEYS
    assert entry["errors"] == {}, entry["errors"]
    assert entry["throughput_rps"] > 0 and entry["ok"] > 0
    latency = entry["latency_us"]
    assert 0 < latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"]
    assert latency["p99"] <= latency["p99_9"] <= latency["max"]
    assert entry["cdf"][-1][1] == pytest.approx(100.0)
    assert entry["client_cpu"]["seconds"] > 0 and entry["client_cpu"]["percent_of_core"] > 0


def assert_sent_at_the_rate(entry: dict[str, Any], rate: float) -> None:
    """The client really sent at `rate`: answers that *arrived* in the 1 s window, and how late
    requests went out after their scheduled times.

    Measured with a busy loop on each of the 2 cores (and with four): throughput within 1 answer/s
    of the rate, send lag p99 under 20 ms. +-25% and 200 ms leave room for a loaded CI machine and
    still fail a client that sends at half or twice the rate, or everything at once.
    """
    assert 0.75 * rate <= entry["throughput_rps"] <= 1.25 * rate, entry["throughput_rps"]
    assert entry["client_lag_us"]["p99"] < 200_000, entry["client_lag_us"]


def test_closed_loop_writes_results_html_and_pngs(server: ServerProcess, tmp_path: Path) -> None:
    results = run(tmp_path, "--target", server.address, "--concurrency", "1,4", plots=True)
    assert {"schema", "created", "scenario", "targets", "results"} <= results.keys()
    entries = results["results"]
    assert [e["step"]["level"] for e in entries] == [1, 4]
    for entry in entries:
        assert_sane(entry)
        assert entry["offered_rps"] == pytest.approx(entry["requests"] / entry["duration_s"])
        # No deadline: every successful answer is good.
        assert entry["goodput_rps"] == entry["throughput_rps"]
        # One request in flight runs alone; four (of one row each) share batches of 1 to 4 rows.
        batch = entry["server"]["avg_batch_size"]
        if entry["step"]["level"] == 1:
            assert batch == 1.0
        else:
            assert 1.0 <= batch <= 4.0
        assert entry["server"]["avg_queue_us"] is not None
    for name in ("report.html", "latency_vs_throughput.png", "goodput_vs_offered.png", "latency_cdf.png"):
        assert (tmp_path / name).stat().st_size > 1000, name
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "latency_cdf.png" in page


def test_open_loop_with_deadline_reports_goodput(server: ServerProcess, tmp_path: Path) -> None:
    results = run(
        tmp_path, "--target", server.address, "--rate", "100", "--arrival", "constant",
        "--deadline-ms", "500", "--processes", "2",
    )  # fmt: skip
    (entry,) = results["results"]
    assert_sane(entry)
    # Constant arrivals from two processes interleave into exactly the offered rate: `offered`
    # counts requests *scheduled* in the window, so it is exact whatever the load (+-1 at the edges).
    assert entry["offered_rps"] == pytest.approx(100, rel=0.05)
    assert_sent_at_the_rate(entry, 100)
    assert 0 < entry["goodput_rps"] <= entry["throughput_rps"]
    assert entry["client_cpu"]["processes"] == 2


def test_tight_deadline_is_counted_by_status_code(server: ServerProcess, tmp_path: Path) -> None:
    results = run(tmp_path, "--target", server.address, "--rate", "50", "--deadline-ms", "0.01")
    (entry,) = results["results"]
    assert entry["requests"] > 0
    assert sum(entry["errors"].values()) + entry["ok"] == entry["requests"]
    assert set(entry["errors"]) <= {"DEADLINE_EXCEEDED", "CLIENT_LATE"}
    assert entry["goodput_rps"] == 0


def test_refusals_come_with_the_servers_message(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Counts by status alone ("INVALID_ARGUMENT: 688") left an operator guessing why.
    results = run(tmp_path, "--target", server.address, "--concurrency", "1", "--batch-size", "200")
    (entry,) = results["results"]
    assert entry["ok"] == 0 and set(entry["errors"]) == {"INVALID_ARGUMENT"}
    message = entry["error_messages"]["INVALID_ARGUMENT"]
    assert "batch-size must be <= 128" in message
    assert not list(tmp_path.glob("*.png"))  # --no-plots (run's default here)
    said = f"INVALID_ARGUMENT x{entry['errors']['INVALID_ARGUMENT']}, e.g. {message}"
    assert said in capsys.readouterr().err


def test_streaming_video_frames(server: ServerProcess, tmp_path: Path) -> None:
    results = run(tmp_path, "--target", server.address, "--streams", "2", "--fps", "20", "--source", "video")
    (entry,) = results["results"]
    assert_sane(entry)
    assert entry["step"]["mode"] == "stream"
    assert entry["offered_rps"] == pytest.approx(40, rel=0.1)  # scheduled: exact, as above
    assert_sent_at_the_rate(entry, 40)


def test_compare_two_targets_yields_ratios(server: ServerProcess, tmp_path: Path) -> None:
    results = run(
        tmp_path, "--compare", f"a={server.address},b={server.address}/mlp",
        "--concurrency", "2", "--rounds", "2",
    )  # fmt: skip
    assert [t["name"] for t in results["targets"]] == ["a", "b"]
    by_target = {e["target"]: e for e in results["results"]}
    for entry in by_target.values():
        assert_sane(entry)
        assert entry["rounds"] == 2 and len(entry["throughput_per_round"]) == 2
    assert by_target["a"]["ratios"]["throughput_rps"] == 1.0
    ratios = by_target["b"]["ratios"]
    assert ratios["throughput_rps"] == pytest.approx(
        by_target["b"]["throughput_rps"] / by_target["a"]["throughput_rps"], rel=1e-3
    )
    assert ratios["p99"] == pytest.approx(
        by_target["b"]["latency_us"]["p99"] / by_target["a"]["latency_us"]["p99"], rel=1e-3
    )


def test_console_module_spawns_its_own_server(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "loadtest", "--spawn-server", "--concurrency", "2",
        "--cache-dir", str(REPO_ROOT / ".cache"), "--out", str(tmp_path), "--no-plots", *SHORT,
    ]  # fmt: skip
    run_ = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert run_.returncode == 0, run_.stderr[-3000:]
    assert "closed c=2" in run_.stdout
    # The spawned server's /metrics is found and read: its figures are in the report.
    (entry,) = json.loads((tmp_path / "results.json").read_text())["results"]
    metrics = entry["server"]["metrics"]
    assert metrics["deadline_on_time"] > 0, metrics
    assert metrics["gauge_cpu_us_per_inference"] > 0, metrics
    assert sum(v for k, v in metrics.items() if k.startswith("dispatch_")) > 0, metrics
    assert "server misses 0" in run_.stdout


def test_unknown_model_is_a_clear_error(server: ServerProcess, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--target", server.address, "--model", "nope", *SHORT]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err
