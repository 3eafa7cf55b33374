"""loadtest/perf_analyzer_table.py's bounds on a perf_analyzer run: its time, and its memory (over
the wire it keeps every request's inputs; one that fell behind grew ~0.5 GB/s until stopped)."""

from __future__ import annotations

import sys

from loadtest.perf_analyzer_table import _waited, memory_cap
from loadtest.proc import Spawned

HOLD_100_MIB = "b = b'x' * (100 << 20)\nprint(1, flush=True)\nimport time\ntime.sleep(60)"


def test_a_run_past_the_memory_cap_is_to_be_stopped_and_says_so() -> None:
    run = Spawned([sys.executable, "-c", HOLD_100_MIB])
    try:
        code, why = _waited(run, 60.0, 50 << 20)
        assert code is None
        assert why.startswith("held 0.1 GiB, past half the machine's memory"), why
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
