"""Ctrl-C while `sluiceway serve` imports numpy, the tester's case: exit 130 with one line.

numpy's C init catches the KeyboardInterrupt raised in its import, prints its traceback and raises
"ImportError: import numpy failed": the start had ended with exit 1 and 37-75 lines (4 of 8
Ctrl-Cs 0.4-0.55 s into a start; `--workers 2` the same). No timing: an audit hook raises SIGINT
in the server process as its first import of numpy begins (through onnxruntime's, for the settings'
execution providers), so the signal provably lands inside that import."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from server.start_signals import INTERRUPTED
from tests.support.server_process import CACHE_DIR, REPO_ROOT

# `python -m server serve ...`, with SIGINT raised when numpy's import starts.
AT_NUMPY = """
import runpy, signal, sys
fired = []
def hook(event, args):
    if event == "import" and args[0] == "numpy" and not fired:
        fired.append(True)
        signal.raise_signal(signal.SIGINT)
signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal's command gets it
sys.addaudithook(hook)
sys.argv = ["server", *sys.argv[1:]]
runpy.run_module("server", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("flags", [(), ("--workers", "2")], ids=["one process", "--workers 2"])
def test_a_sigint_while_numpy_imports_exits_130_with_one_line(tmp_path: Path, flags: tuple[str, ...]) -> None:
    args = ["serve", "--model-repository", str(tmp_path), "--port", "0", "--metrics-port", "0",
            "--cache-dir", str(CACHE_DIR), *flags]  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-c", AT_NUMPY, *args],
        cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert (out.returncode, out.stdout, out.stderr) == (130, "", f"{INTERRUPTED}\n"), out.stderr[-3000:]
