"""`python -m loadtest.transport_ceiling` against a real server with a stand-in perf_analyzer: a
point that fails (perf_analyzer's "Failed to obtain stable measurement", seen at a load average of
25-32) is said in its row and the points after it are still measured; it had ended the run."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.transport_ceiling import main


def test_a_failed_point_is_said_and_the_others_go_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tool, calls = tmp_path / "perf_analyzer", tmp_path / "calls"
    # The first call fails as perf_analyzer does under a heavy load; the others write a report.
    tool.write_text(
        f"#!/bin/sh\necho x >> {calls}\n"
        f'if [ "$(wc -l < {calls})" -eq 1 ]; then echo "Failed to obtain stable measurement."; exit 2; fi\n'
        'while [ "$1" != -f ]; do shift; done\n'
        'printf "Inferences/Second,p50 latency,p99 latency\\n10,1000,2000\\n" > "$2"\n'
    )
    tool.chmod(0o755)
    assert main(["--concurrency", "16", "--rounds", "1", "--perf-analyzer", str(tool)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert (
        lines[0]
        == "round 1 16 in flight wire: failed: perf_analyzer exit 2: Failed to obtain stable measurement."
    )
    assert lines[1].startswith("round 1 16 in flight shm :    10.0 rows/s"), lines
    assert len(calls.read_text().splitlines()) == 2
