"""`python -m loadtest.beside_streams` in a short mode: both servers start, streams and unary calls
run against each, and the summary holds each setting's figures. The pace is off on A, so A held
no read; nothing here is a measure (RELIABILITY.md has the full run's figures)."""

from __future__ import annotations

import json
from pathlib import Path

from loadtest import beside_streams
from tests.support.once import LOADTEST_RUNS, once_per_command

pytestmark = once_per_command(LOADTEST_RUNS)


def test_the_short_mode_runs_both_settings_and_writes_their_figures(demo_repo: Path, tmp_path: Path) -> None:
    repo = f"--model-repository {demo_repo}"
    argv = [
        "--rounds", "1", "--streams", "2", "--fps", "50", "--concurrency", "2", "--unary-s", "1",
        "--lead-s", "0.5", "--a-args", f"--stream-pace-lag-ms 0 {repo}", "--b-args", repo,
        "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    assert beside_streams.main(argv) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["flags"]["A"][:2] == ["--stream-pace-lag-ms", "0"]
    for name in ("A", "B"):
        (run,) = summary["runs"][name]
        assert run["unary_rate"] > 0 and run["stream_rate"] > 0, (name, run)
        assert run["paced_reads"] >= 0, (name, run)  # read from the server's /metrics
    assert summary["runs"]["A"][0]["paced_reads"] == 0  # off: never held
