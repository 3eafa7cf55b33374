"""The perf_analyzer the tests may run, found as the load-test commands find it ($SLUICEWAY_PERF_ANALYZER,
../shared/tools, PATH) and started once: its first call sets it up (downloads its wheel and runtime
libraries), and one that cannot start here is a reason to skip, not a failure."""

from __future__ import annotations

import subprocess
from pathlib import Path

from loadtest.perf_analyzer_path import PerfAnalyzerMissing, find_perf_analyzer

SETUP_S = 600  # the first call's download, on a slow day


def usable_perf_analyzer() -> Path | str:
    """The tool's path, or why there is none that starts here."""
    try:
        tool = find_perf_analyzer(None)
    except PerfAnalyzerMissing as exc:
        return str(exc)
    try:
        probe = subprocess.run([str(tool)], capture_output=True, text=True, timeout=SETUP_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"perf_analyzer cannot start here: {exc}"
    said = probe.stdout + probe.stderr
    if "model name" not in said and "Usage" not in said:  # run bare, it prints its usage
        return f"perf_analyzer cannot start here: {said[-500:]}"
    return tool
