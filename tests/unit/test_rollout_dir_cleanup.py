"""The --workers parent's share directory (server/models/rollout_dir.py): made with its owner's pid
and start time; at start the directories of its kind whose owner is gone (a parent killed by
SIGKILL) are removed, never one whose owner lives, one without a record, another prefix, a link."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from server.models.rollout_dir import (
    DIR_PREFIX,
    make_share_dir,
    read_owner,
    remove_stale_share_dirs,
    start_time,
)


def left(tmp_path: Path, name: str, owner: str | None) -> Path:
    """A share directory as a parent left it, with `owner` as its record (None: no record)."""
    directory = tmp_path / name
    directory.mkdir(mode=0o700)
    (directory / "op-0000000000000000-0-0000000001.json").write_text("{}")
    if owner is not None:
        (directory / "owner").write_text(owner)
    return directory


def dead_pid() -> int:
    """The pid of a process that has exited (and been waited for)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="start times from /proc")
def test_only_directories_whose_owner_is_gone_are_removed(tmp_path: Path) -> None:
    me, started = os.getpid(), start_time(os.getpid())
    assert started is not None
    killed = left(tmp_path, f"{DIR_PREFIX}killed", f"{dead_pid()} 12345\n")
    reused = left(tmp_path, f"{DIR_PREFIX}reused", f"{me} {started + 1}\n")  # our pid, not our start
    live = left(tmp_path, f"{DIR_PREFIX}live", f"{me} {started}\n")
    unknown_start = left(tmp_path, f"{DIR_PREFIX}nostart", f"{me} -\n")
    no_record = left(tmp_path, f"{DIR_PREFIX}older", None)  # an older version's, or being made
    garbled = left(tmp_path, f"{DIR_PREFIX}garbled", "not a pid\n")
    other = left(tmp_path, "something-else", f"{dead_pid()} 1\n")
    link = tmp_path / f"{DIR_PREFIX}link"
    link.symlink_to(killed)

    removed = remove_stale_share_dirs(tmp_path)

    assert sorted(removed) == sorted([killed, reused])
    assert not killed.exists() and not reused.exists()
    for kept in (live, unknown_start, no_record, garbled, other):
        assert kept.is_dir(), kept
    assert link.is_symlink()


def test_a_new_directory_is_private_and_records_this_process(tmp_path: Path) -> None:
    directory = make_share_dir(tmp_path)
    assert directory.name.startswith(DIR_PREFIX) and directory.stat().st_mode & 0o777 == 0o700
    assert read_owner(directory) == (os.getpid(), start_time(os.getpid()))
    assert remove_stale_share_dirs(tmp_path) == [] and directory.is_dir()
