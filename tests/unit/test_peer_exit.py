"""A benchmark peer whose shutdown hangs still exits, and says where it hung."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

STUCK = """
import threading
from loadtest.peers.common import exit_within
exit_within(0.2)
threading.Event().wait()  # a shutdown that never finishes
"""


def test_a_peer_stuck_after_its_stop_signal_exits_with_every_threads_stack() -> None:
    done = subprocess.run(
        [sys.executable, "-c", STUCK], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "still running 0.2 s after the stop signal" in done.stdout
    assert "Thread 0x" in done.stdout and "<string>" in done.stdout  # the stuck line's frame
