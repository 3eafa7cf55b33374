"""`python -m loadtest.connection_spread` in a short mode (one round, 1 s points, no perf_analyzer):
its model loads under `--workers 2` with fault injection, and both harness rows are measured. (Its
figures: BENCHMARKS.md section 40; the connections themselves: tests/unit/test_loadtest_connections.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from loadtest import connection_spread
from tests.support.once import LOADTEST_RUNS, once_per_command

pytestmark = [pytest.mark.serial, once_per_command(LOADTEST_RUNS)]  # a load run: alone, as the others


def test_the_short_mode_measures_both_harness_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--workers", "2", "--concurrency", "4", "--rounds", "1", "--duration-s", "1"]
    assert connection_spread.main([*args, "--perf-analyzer", str(tmp_path / "none")]) == 0
    out = capsys.readouterr().out
    assert "perf_analyzer rows skipped" in out
    rows = re.findall(r"^\| (harness[^|]*) \| 1 \| ([0-9.]+) \|$", out, re.MULTILINE)
    assert [label for label, _ in rows] == [
        "harness, 2 processes x 1 connection",
        "harness, 1 connection a user",
    ]
    assert all(float(rate) > 0 for _, rate in rows), out
