"""The parent's ready line under `--workers`: every worker's models, once where they agree.

A tester's report (session 53, F8): a worker that started while a model's files changed failed to
load two models; the parent's line repeated the other worker's summary ("models: add, ens1,
enslatest, outer; 2 workers") and hid the failures. Stand-in workers print a ready line each and
wait for the parent's SIGTERM; no model is loaded.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

import server.workers
from server.settings import ServerSettings
from server.workers import ready_models, run_workers

FULL = "add, ens1, enslatest, outer"
SHORT = "add, enslatest; failed to load: ens1, outer"


def test_alike_workers_are_named_once() -> None:
    assert ready_models({1: FULL, 0: FULL}) == f"{FULL}; 2 workers"


def test_workers_that_differ_are_each_named_in_order() -> None:
    assert ready_models({1: FULL, 0: SHORT}) == f"2 workers, not alike: worker 0: {SHORT} | worker 1: {FULL}"


Spawn = Callable[[ServerSettings, dict[str, str], int], "subprocess.Popen[str]"]


def _stand_in(summaries: list[str]) -> Spawn:
    """Worker `index` prints a ready line naming `summaries[index]` and waits."""

    def spawn(settings: ServerSettings, env: dict[str, str], index: int) -> subprocess.Popen[str]:
        line = f"sluiceway ready on 127.0.0.1:1 (models: {summaries[index]})"
        # Gone by itself after 20 s (SIGALRM): a parent that never announces then fails, not hangs.
        script = f"import signal; print({line!r}, flush=True); signal.alarm(20); signal.pause()"
        return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)

    return spawn


@pytest.mark.parametrize(
    ("summaries", "expected"),
    [
        ([SHORT, FULL], f"(models: 2 workers, not alike: worker 0: {SHORT} | worker 1: {FULL})"),
        ([FULL, SHORT], f"(models: 2 workers, not alike: worker 0: {FULL} | worker 1: {SHORT})"),
        ([FULL, FULL], f"(models: {FULL}; 2 workers)"),
    ],
)
def test_the_parents_ready_line_names_what_each_worker_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, summaries: list[str], expected: str
) -> None:
    lines: list[str] = []

    def announce(line: str, json_lines: bool) -> None:
        lines.append(line)
        signal.raise_signal(signal.SIGTERM)  # then stop: the parent's handler notes it

    monkeypatch.setattr(server.workers, "_spawn", _stand_in(summaries))
    monkeypatch.setattr(server.workers, "announce", announce)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # its share directory, and the stale-dir scan
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        settings = ServerSettings(port=0, workers=2, metrics_port=0, cache_dir=tmp_path, shutdown_grace_s=1)
        assert run_workers(settings, tmp_path) == 0
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert len(lines) == 1 and lines[0].endswith(expected), lines
