"""The --workers parent's share directory (server/models/rollout_dir.py): made with its owner's pid
and start time and a lock the owner holds; at start the directories of its kind whose lock is free
(a parent killed by SIGKILL) are removed, never one whose owner lives, one without a lock file (an
older version's), another prefix, a link, or one whose lock file is a link.
(tests/unit/test_rollout_dir_liveness.py: other PID namespaces, zombies, workers.)"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import pytest

from server.models.rollout_dir import (
    DIR_PREFIX,
    LOCK_FILE,
    make_share_dir,
    read_owner,
    remove_stale_share_dirs,
    start_time,
    temp_dir_fallback,
)
from tests.support.share_owner import end, made_by, start_owner


def left_by_exited_owner(tmp_path: Path, name: str) -> Path:
    """A share directory whose owner made it and exited, renamed `name`."""
    scratch = tmp_path / f"scratch-{name}"
    scratch.mkdir()
    owner = start_owner(scratch)
    directory = made_by(owner, scratch)
    end(owner)
    return directory.rename(tmp_path / name)


def left(tmp_path: Path, name: str, owner: str | None) -> Path:
    """A share directory as an older version left it, with `owner` as its record and no lock."""
    directory = tmp_path / name
    directory.mkdir(mode=0o700)
    (directory / "op-0000000000000000-0-0000000001.json").write_text("{}")
    if owner is not None:
        (directory / "owner").write_text(owner)
    return directory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="flock and /proc")
def test_only_directories_whose_owner_is_gone_are_removed(tmp_path: Path) -> None:
    killed = left_by_exited_owner(tmp_path, f"{DIR_PREFIX}killed")
    other = left_by_exited_owner(tmp_path, "something-else")
    live = make_share_dir(tmp_path)
    older = left(tmp_path, f"{DIR_PREFIX}older", "999999999 1\n")  # no lock file: never removed
    no_record = left(tmp_path, f"{DIR_PREFIX}norecord", None)
    linked_lock = left(tmp_path, f"{DIR_PREFIX}linkedlock", None)
    (linked_lock / LOCK_FILE).symlink_to(killed / LOCK_FILE)
    link = tmp_path / f"{DIR_PREFIX}link"
    link.symlink_to(killed)

    removed = remove_stale_share_dirs(tmp_path)

    assert removed == [killed] and not killed.exists()
    for kept in (live.path, older, no_record, linked_lock, other):
        assert kept.is_dir(), kept
    assert link.is_symlink()
    live.remove()
    assert not live.path.exists()


def test_a_new_directory_is_private_and_records_this_process(tmp_path: Path) -> None:
    directory = make_share_dir(tmp_path)
    path = directory.path
    assert path.name.startswith(DIR_PREFIX) and path.stat().st_mode & 0o777 == 0o700
    assert read_owner(path) == (os.getpid(), start_time(os.getpid()))
    assert remove_stale_share_dirs(tmp_path) == [] and path.is_dir()
    directory.remove()


def test_a_tmpdir_python_skipped_is_said(tmp_path: Path) -> None:
    """Python's tempfile skips a TMPDIR it cannot write to, silently: a container given its own
    full TMPDIR shared the host's /tmp for its workers' directory (an SRE tester, a 64 KiB tmpfs)."""
    (tmp_path / "link").symlink_to(tmp_path)
    assert temp_dir_fallback({}, "/tmp") is None
    assert temp_dir_fallback({"TMPDIR": str(tmp_path / "link")}, str(tmp_path)) is None  # the same
    said = temp_dir_fallback({"TMPDIR": str(tmp_path / "full")}, "/tmp")
    assert (
        said
        == f"TMPDIR {tmp_path / 'full'} cannot be written (full, read-only or missing): using /tmp instead"
    )


def test_directories_without_a_lock_file_are_named_in_one_line_and_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A pre-lock build's directory cannot be proved dead (its pid means nothing in another PID
    namespace): the start names it for an operator, once; one being made (changed just now) is not
    named. They had been kept silently."""
    older = left(tmp_path, f"{DIR_PREFIX}older", "999999999 1\n")
    no_record = left(tmp_path, f"{DIR_PREFIX}norecord", None)
    long_ago = time.time() - 3600  # (MAKING_S is a minute)
    for path in (older, no_record):
        os.utime(path, (long_ago, long_ago))
    making = left(tmp_path, f"{DIR_PREFIX}making", "999999999 1\n")  # its lock not renamed in yet
    live = make_share_dir(tmp_path)
    os.utime(live.path, (long_ago, long_ago))

    with caplog.at_level(logging.WARNING, logger="server.models.rollout_dir"):
        assert remove_stale_share_dirs(tmp_path) == []

    lines = [r.getMessage() for r in caplog.records if "without a lock file" in r.getMessage()]
    assert len(lines) == 1, lines
    assert str(older) in lines[0] and str(no_record) in lines[0], lines
    assert str(making) not in lines[0] and str(live.path) not in lines[0], lines
    for kept in (older, no_record, making, live.path):
        assert kept.is_dir(), kept
    live.remove()


def test_the_line_names_a_bounded_number_of_directories() -> None:
    from server.models.rollout_dir import MAX_NAMED, lockless_line

    paths = [Path(f"/tmp/{DIR_PREFIX}{i:02d}") for i in range(MAX_NAMED + 3)]
    line = lockless_line(paths)
    assert str(paths[MAX_NAMED - 1]) in line and str(paths[MAX_NAMED]) not in line
    assert "and 3 more" in line and line.startswith(f"{MAX_NAMED + 3} workers' share directories")
