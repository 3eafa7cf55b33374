"""Where `sluiceway-loadtest crosscheck` finds perf_analyzer (loadtest/perf_analyzer_path.py):
--perf-analyzer, else $SLUICEWAY_PERF_ANALYZER, else ../shared/tools/perf_analyzer, else PATH; and
none found is one line and exit 2 before anything is measured (a checkout without ../shared had
measured our half, then ended in a FileNotFoundError traceback)."""

from __future__ import annotations

from pathlib import Path

import pytest

import loadtest.crosscheck
import loadtest.perf_analyzer_path
from loadtest.perf_analyzer_path import PerfAnalyzerMissing, find_perf_analyzer

# Stands in for perf_analyzer: notes its arguments and writes the CSV row crosscheck reads (-f).
FAKE = """#!/bin/sh
echo "$@" >> "$(dirname "$0")/called"
while [ $# -gt 0 ]; do [ "$1" = -f ] && printf 'Inferences/Second\\n100\\n' > "$2"; shift; done
"""


def tool(folder: Path, name: str = "perf_analyzer", executable: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(FAKE)
    path.chmod(0o755 if executable else 0o644)
    return path


@pytest.fixture()
def no_shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """../shared/tools/perf_analyzer is not there (as in any git worktree)."""
    missing = tmp_path / "shared" / "tools" / "perf_analyzer"
    monkeypatch.setattr(loadtest.perf_analyzer_path, "SHARED_PERF_ANALYZER", missing)
    return missing


def test_the_flag_comes_first_and_must_be_runnable(tmp_path: Path, no_shared: Path) -> None:
    flag, named = tool(tmp_path / "a"), tool(tmp_path / "b")
    env = {"SLUICEWAY_PERF_ANALYZER": str(named), "PATH": str(tmp_path / "b")}
    assert find_perf_analyzer(flag, env) == flag
    with pytest.raises(PerfAnalyzerMissing, match=r"--perf-analyzer names .*/nope, no such file"):
        find_perf_analyzer(tmp_path / "nope", env)  # not passed over for the variable's
    with pytest.raises(PerfAnalyzerMissing, match=r"\(--perf-analyzer\) is not executable"):
        find_perf_analyzer(tool(tmp_path / "c", executable=False), env)


def test_the_variable_comes_next_and_must_be_runnable(tmp_path: Path, no_shared: Path) -> None:
    named = tool(tmp_path / "b")
    tool(no_shared.parent)  # ../shared has one too: the variable wins
    assert find_perf_analyzer(None, {"SLUICEWAY_PERF_ANALYZER": str(named)}) == named
    with pytest.raises(PerfAnalyzerMissing, match=r"SLUICEWAY_PERF_ANALYZER names .*/nope, no such file"):
        find_perf_analyzer(None, {"SLUICEWAY_PERF_ANALYZER": str(tmp_path / "nope")})


def test_then_shared_tools_then_path(tmp_path: Path, no_shared: Path) -> None:
    on_path = tool(tmp_path / "bin")
    env = {"PATH": str(tmp_path / "bin")}
    assert find_perf_analyzer(None, env) == on_path
    shared = tool(no_shared.parent)
    assert find_perf_analyzer(None, env) == shared


def test_none_found_names_where_it_looked_and_what_to_set(tmp_path: Path, no_shared: Path) -> None:
    with pytest.raises(PerfAnalyzerMissing) as missing:
        find_perf_analyzer(None, {"PATH": str(tmp_path / "empty")})
    said = str(missing.value)
    assert "\n" not in said
    assert f"none runnable at {no_shared} or on PATH" in said
    assert "pass --perf-analyzer PATH or set SLUICEWAY_PERF_ANALYZER" in said


def test_crosscheck_without_perf_analyzer_exits_2_before_measuring(
    tmp_path: Path, no_shared: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    measured: list[int] = []
    monkeypatch.setattr(loadtest.crosscheck, "ours", lambda *args: measured.append(1) or 100.0)
    monkeypatch.delenv("SLUICEWAY_PERF_ANALYZER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    # Nothing listens on the target: nothing may be sent to it either.
    assert (
        loadtest.crosscheck.main(["--target", "127.0.0.1:24799", "--concurrency", "1", "--rounds", "1"]) == 2
    )
    err = capsys.readouterr().err
    assert measured == []
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("sluiceway-loadtest crosscheck: perf_analyzer not found")
    assert "SLUICEWAY_PERF_ANALYZER" in err


def test_crosscheck_runs_the_perf_analyzer_the_variable_names(
    tmp_path: Path, no_shared: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = tool(tmp_path / "pa")
    monkeypatch.setattr(loadtest.crosscheck, "ours", lambda *args: 100.0)
    monkeypatch.setenv("SLUICEWAY_PERF_ANALYZER", str(fake))
    args = ["--target", "127.0.0.1:24799", "--concurrency", "1", "--rounds", "1", "--duration-s", "1"]
    assert loadtest.crosscheck.main(args) == 0
    assert "| 1 | 100.0 | 100.0 | 1.000 |" in capsys.readouterr().out
    (called,) = (tmp_path / "pa" / "called").read_text().splitlines()
    assert called.startswith("-m mlp -u 127.0.0.1:24799 -i grpc --concurrency-range 1 ")
