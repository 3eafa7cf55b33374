"""A sync-API peer stops on a SIGTERM that the kernel hands to one of its other threads.

Python runs signal handlers on the main thread only. `kill` of a thread's id (not the process's)
makes Linux deliver the process-wide signal to that thread when it can take it: the case a busy
process meets by chance, here on purpose."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc/PID/task")
def test_the_sync_floor_stops_on_a_sigterm_taken_by_another_thread() -> None:
    command = [sys.executable, "-m", "loadtest.peers.floor", "--api", "sync", "--mode", "echo",
               "--model", "mlp", "--port", "0", "--sync-threads", "4"]  # fmt: skip
    peer = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert peer.stdout is not None
        said = [peer.stdout.readline() for _ in range(1)]
        while said[-1] and "ready on 127.0.0.1:" not in said[-1] and len(said) < 100:
            said.append(peer.stdout.readline())  # warnings printed before it, if any
        assert "ready on 127.0.0.1:" in said[-1], "".join(said)
        others = sorted(int(t) for t in os.listdir(f"/proc/{peer.pid}/task") if int(t) != peer.pid)
        assert others, "the peer runs no thread besides its main one"
        os.kill(others[0], signal.SIGTERM)
        out, _ = peer.communicate(timeout=60)  # a generous bound: it exits in well under a second
    finally:
        if peer.poll() is None:
            peer.kill()
            peer.wait()
    assert peer.returncode == 0, out
    assert "still running" not in out, out  # stopped by its own shutdown, not by exit_within's timer
