"""loadtest/perf_analyzer_table.py's bounds on a perf_analyzer run: its time, and its memory (over
the wire it keeps every request's inputs; one that fell behind grew ~0.5 GB/s until stopped)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from loadtest.perf_analyzer_table import STOPPED, _waited, memory_cap, run_perf_analyzer
from loadtest.proc import Spawned

HOLD_100_MIB = "b = b'x' * (100 << 20)\nprint(1, flush=True)\nimport time\ntime.sleep(60)"


def test_a_run_past_the_memory_cap_is_to_be_stopped_and_says_so() -> None:
    run = Spawned([sys.executable, "-c", HOLD_100_MIB])
    try:
        code, why = _waited(run, 60.0, 50 << 20)
        assert code is None
        assert re.match(r"held \d+\.\d GiB, past half the machine's memory", why), why
    finally:
        run.stop()


def test_a_run_within_its_bounds_gives_its_exit_code() -> None:
    run = Spawned([sys.executable, "-c", "raise SystemExit(3)"])
    assert _waited(run, 60.0, memory_cap()) == (3, "")
    stuck = Spawned([sys.executable, "-c", HOLD_100_MIB])
    try:
        assert _waited(stuck, 1.5, memory_cap()) == (None, "ran past 2 s")
    finally:
        stuck.stop()
    assert memory_cap() > 1 << 30


def test_a_report_written_before_a_hung_exit_is_kept_with_a_note(tmp_path: Path) -> None:
    """perf_analyzer writes its report, then stops its threads (each waits for its call) and frees
    the point's records: a reviewer caught that going on past 40 s after the report. The point's
    measurement is whole, so it is kept, said to have been stopped; a report half written is not."""
    tool = tmp_path / "perf_analyzer"
    tool.write_text(
        '#!/bin/sh\nwhile [ "$1" != -f ]; do shift; done\n'
        'printf "Inferences/Second,p50 latency,p99 latency\\n10,1000,2000\\n" > "$2"\n'
        f"exec sleep 98.{os.getpid()}\n"
    )
    tool.chmod(0o755)
    row = run_perf_analyzer(tool, 1, "resnet", 16, False, 300, limit_s=3.0)
    assert row["Inferences/Second"] == "10" and row["p99 latency"] == "2000"
    assert row[STOPPED] == "perf_analyzer ran past 3 s after writing its report and was stopped"
    tool.write_text(tool.read_text().replace("\\n10,1000,2000\\n", "\\n10,1000\\n"))
    with pytest.raises(RuntimeError, match="ran past 3 s and was stopped"):
        run_perf_analyzer(tool, 1, "resnet", 16, False, 300, limit_s=3.0)


def test_the_memory_cap_is_half_of_the_machine_or_of_a_smaller_cgroup_limit(tmp_path: Path) -> None:
    limit = tmp_path / "memory.max"
    limit.write_text("max\n")
    whole = memory_cap(limit)
    assert whole == memory_cap(tmp_path / "absent") > 1 << 29
    limit.write_text(f"{1 << 30}\n")
    assert memory_cap(limit) == 1 << 29


def test_variables_given_reach_perf_analyzer_beside_this_processs(tmp_path: Path) -> None:
    """How the GPU check gives perf_analyzer a connection a request in flight against several
    server processes (gpu_perf_analyzer.spread_env)."""
    tool = tmp_path / "perf_analyzer"
    tool.write_text(
        '#!/bin/sh\nwhile [ "$1" != -f ]; do shift; done\n'
        'printf "Inferences/Second,p50 latency,p99 latency,share,home\\n1,1,1,%s,%s\\n" '
        '"$TRITON_CLIENT_GRPC_CHANNEL_MAX_SHARE_COUNT" "$HOME" > "$2"\n'
    )
    tool.chmod(0o755)
    row = run_perf_analyzer(
        tool,
        1,
        "resnet",
        16,
        False,
        300,
        limit_s=30.0,
        env={"TRITON_CLIENT_GRPC_CHANNEL_MAX_SHARE_COUNT": "1"},
    )
    assert row["share"] == "1" and row["home"] == os.environ.get("HOME", "")
    assert run_perf_analyzer(tool, 1, "resnet", 16, False, 300, limit_s=30.0)["share"] == ""
