"""Where NVIDIA's perf_analyzer is, found before anything is measured.

In order: `--perf-analyzer PATH`, else $SLUICEWAY_PERF_ANALYZER (the variable the perf_analyzer
tests read), else ../shared/tools/perf_analyzer beside this checkout, else `perf_analyzer` on PATH.
A checkout without ../shared (any git worktree) had measured our half of a crosscheck, then ended
in a FileNotFoundError traceback.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

ENV_VAR = "SLUICEWAY_PERF_ANALYZER"
REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_PERF_ANALYZER = REPO_ROOT.parent / "shared" / "tools" / "perf_analyzer"
HOW = f"pass --perf-analyzer PATH or set {ENV_VAR}"


class PerfAnalyzerMissing(Exception):
    """No runnable perf_analyzer where it was looked for (exit 2); the message is one line."""


def find_perf_analyzer(given: Path | None, env: Mapping[str, str] | None = None) -> Path:
    """The perf_analyzer to run (`env`: os.environ unless given). A path named by the flag or the
    variable must be runnable: a mistyped one is said, not passed over for another tool."""
    env = os.environ if env is None else env
    if given is not None:
        return _runnable(given, "--perf-analyzer")
    named = env.get(ENV_VAR)
    if named:
        return _runnable(Path(named), ENV_VAR)
    shared = SHARED_PERF_ANALYZER
    if _is_runnable(shared):
        return shared
    on_path = shutil.which("perf_analyzer", path=env.get("PATH", os.defpath))
    if on_path:
        return Path(on_path)
    raise PerfAnalyzerMissing(f"perf_analyzer not found: none runnable at {shared} or on PATH; {HOW}")


def _runnable(path: Path, source: str) -> Path:
    if not path.is_file():
        raise PerfAnalyzerMissing(f"perf_analyzer not found: {source} names {path}, no such file; {HOW}")
    if not os.access(path, os.X_OK):
        raise PerfAnalyzerMissing(f"perf_analyzer at {path} ({source}) is not executable; {HOW}")
    return path.absolute()  # a bare name is looked up on PATH by subprocess, not here


def _is_runnable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)
