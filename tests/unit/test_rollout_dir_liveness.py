"""A --workers parent's clean-up (server/models/rollout_dir.py) tells a live share directory's owner
from a dead one by the owner's lock, not by a pid: a live owner whose pid means nothing here (another
PID namespace: containers sharing /tmp) keeps its directory; one killed and not yet reaped (a zombie)
is gone; its workers, spawned by exec, never hold the lock."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.models.rollout_dir import OWNER_FILE, remove_stale_share_dirs
from tests.support.procfs import alive
from tests.support.share_owner import end, made_by, start_owner

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="flock, /proc")


@pytest.fixture
def owners() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for owner in started:
        if owner.poll() is None:
            owner.kill()
        end(owner)


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def killed_not_reaped(owner: subprocess.Popen[str]) -> None:
    """SIGKILL `owner` and wait until it has exited, leaving it a zombie (WNOWAIT: not reaped)."""
    owner.send_signal(signal.SIGKILL)
    os.waitid(os.P_PID, owner.pid, os.WEXITED | os.WNOWAIT)
    assert (Path(f"/proc/{owner.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) == "Z"


@linux_only
def test_a_live_owner_whose_pid_means_nothing_here_keeps_its_directory(
    tmp_path: Path, owners: list[subprocess.Popen[str]]
) -> None:
    owners.append(owner := start_owner(tmp_path))
    directory = made_by(owner, tmp_path)
    # What its record reads as from another PID namespace: a pid no process here has.
    (directory / OWNER_FILE).write_text(f"{dead_pid()} 1\n")
    assert remove_stale_share_dirs(tmp_path) == []
    assert directory.is_dir() and (directory / OWNER_FILE).is_file()


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    try:
        done = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True,
                              timeout=30)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@linux_only
def test_a_live_owner_in_another_pid_namespace_keeps_its_directory(
    tmp_path: Path, owners: list[subprocess.Popen[str]]
) -> None:
    if not _unshare_works():
        pytest.skip("unshare --pid needs privileges this machine does not give")
    owners.append(owner := start_owner(tmp_path, prefix=("unshare", "--pid", "--fork", "--mount-proc")))
    directory = made_by(owner, tmp_path)
    assert remove_stale_share_dirs(tmp_path) == []  # its record says pid 1, which runs here too
    assert directory.is_dir()
    end(owner)  # its lock goes with it: removed now
    assert remove_stale_share_dirs(tmp_path) == [directory] and not directory.exists()


@linux_only
def test_an_owner_killed_and_not_yet_reaped_is_gone(
    tmp_path: Path, owners: list[subprocess.Popen[str]]
) -> None:
    owners.append(owner := start_owner(tmp_path))
    directory = made_by(owner, tmp_path)
    assert remove_stale_share_dirs(tmp_path) == [] and directory.is_dir()  # alive
    killed_not_reaped(owner)
    assert remove_stale_share_dirs(tmp_path) == [directory]
    assert not directory.exists()


@linux_only
def test_a_dead_owners_worker_does_not_hold_its_directory(
    tmp_path: Path, owners: list[subprocess.Popen[str]]
) -> None:
    owners.append(owner := start_owner(tmp_path, how="spawn"))
    directory = made_by(owner, tmp_path)
    assert owner.stdout is not None
    worker = int(owner.stdout.readline())
    killed_not_reaped(owner)
    assert alive(worker)  # still running (it ends when its stdin, ours, closes)
    assert remove_stale_share_dirs(tmp_path) == [directory]
