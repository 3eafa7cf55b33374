"""A `--workers` server stopped by a signal to its whole process group (Ctrl-C in a terminal,
`timeout`, systemd's KillMode=control-group, `kill -- -PGID`) drains and exits 0.

The workers get the signal too: an idle one drained and exited while the parent waited on its
0.2 s tick, and the parent took that exit for a worker's failure (exit 1, "a worker exited;
stopping the others"; 2 of 2 runs under `timeout`). The tests make that order certain: the parent
is stopped (SIGSTOP) while the group's signal reaches all, and continued once both workers have
exited, so it meets their exits with its own signal not yet handled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.procfs import alive, children_of
from tests.support.server_process import REPO_ROOT, wait_until

pytestmark = [
    pytest.mark.serial,
    pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc"),
]


def _start_in_own_group(demo_repo: Path) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "server", "serve", "--model-repository", str(demo_repo),
               "--workers", "2", "--port", "0", "--metrics-port", "0"]  # fmt: skip
    return subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's job or a service has
    )


def _read_until_ready(parent: subprocess.Popen[str]) -> None:
    assert parent.stdout is not None
    seen = []
    for line in parent.stdout:
        seen.append(line)
        if "sluiceway ready" in line and "2 workers" in line:
            return
    pytest.fail("the server exited before it was ready:\n" + "".join(seen[-30:]))


def _exited(pid: int) -> bool:
    return not alive(pid)  # a zombie its stopped parent has not reaped counts as exited


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_process_group_drains_and_exits_zero(demo_repo: Path, sig: signal.Signals) -> None:
    parent = _start_in_own_group(demo_repo)
    workers: list[int] = []
    try:
        _read_until_ready(parent)
        workers = children_of(parent.pid)
        assert len(workers) == 2, workers
        os.kill(parent.pid, signal.SIGSTOP)
        os.killpg(parent.pid, sig)  # the parent's copy waits, pending, until it is continued
        wait_until(lambda: all(_exited(w) for w in workers), "the workers to drain and exit", timeout_s=60)
        os.kill(parent.pid, signal.SIGCONT)
        out, _ = parent.communicate(timeout=120)
        assert parent.returncode == 0, out[-3000:]
        assert "a worker exited" not in out
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.wait()
        for worker in workers:
            if alive(worker):
                os.kill(worker, signal.SIGKILL)


def test_a_worker_that_exits_zero_with_no_signal_to_the_parent_is_still_a_failure(demo_repo: Path) -> None:
    # Its own SIGTERM drains it and it exits 0, but nobody asked the server to stop.
    parent = _start_in_own_group(demo_repo)
    workers: list[int] = []
    try:
        _read_until_ready(parent)
        workers = children_of(parent.pid)
        assert len(workers) == 2, workers
        os.kill(workers[0], signal.SIGTERM)
        out, _ = parent.communicate(timeout=120)
        assert parent.returncode == 1, out[-3000:]
        assert "a worker exited; stopping the others" in out
        wait_until(lambda: not alive(workers[1]), "the other worker to exit", timeout_s=60)
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.wait()
        for worker in workers:
            if alive(worker):
                os.kill(worker, signal.SIGKILL)
