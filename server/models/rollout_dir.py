"""Under `--workers N`: the parent's private directory for the workers' rollout log
(server/models/rollout_share.py), made with a record of its owner, and the clean-up of those a
parent killed by SIGKILL left in the temp directory.

The parent removes its directory at exit; SIGKILL gives it no exit. So each directory holds
`owner`: the parent's pid and its start time (Linux's /proc/<pid>/stat, in clock ticks since
boot), and a parent starting removes the directories of its kind (the prefix, a real directory of
its own uid) whose owner is gone: no such pid, or a pid now held by a later process (another start
time). A directory whose owner lives, or that has no readable record (made by an older version, or
being made right now), is never removed.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

DIR_PREFIX = "sluiceway-rollout-"
OWNER_FILE = "owner"  # "<pid> <start time>" ("-" when the start time is not known)
MAX_OWNER_BYTES = 64


def make_share_dir(temp_dir: Path | None = None) -> Path:
    """A new private directory (mkdtemp: mode 0700) recording this process as its owner."""
    directory = Path(tempfile.mkdtemp(prefix=DIR_PREFIX, dir=temp_dir))
    start = start_time(os.getpid())
    temporary = directory / f".{OWNER_FILE}.tmp"
    temporary.write_text(f"{os.getpid()} {'-' if start is None else start}\n", encoding="ascii")
    os.replace(temporary, directory / OWNER_FILE)  # read whole or not at all by a clean-up
    return directory


def remove_stale_share_dirs(temp_dir: Path | None = None) -> list[Path]:
    """Remove this uid's share directories in `temp_dir` (default: the temp directory) whose
    recorded owner is no longer running; the directories removed."""
    base = Path(temp_dir or tempfile.gettempdir())
    removed = []
    try:
        candidates = [p for p in base.iterdir() if p.name.startswith(DIR_PREFIX)]
    except OSError:
        return []
    for path in candidates:
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():  # not one we made
            continue
        owner = read_owner(path)
        if owner is None or owner_alive(*owner):
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            removed.append(path)
            log.warning("removed %s: left by server process %d, which is gone", path, owner[0])
    return removed


def read_owner(directory: Path) -> tuple[int, int | None] | None:
    """(pid, start time or None) of the directory's owner record; None without a readable one."""
    try:
        fd = os.open(directory / OWNER_FILE, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        data = os.read(fd, MAX_OWNER_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    parts = data.decode("ascii", "replace").split()
    if len(data) > MAX_OWNER_BYTES or len(parts) != 2 or not parts[0].isdigit():
        return None
    if parts[1] != "-" and not parts[1].isdigit():
        return None
    return int(parts[0]), None if parts[1] == "-" else int(parts[1])


def owner_alive(pid: int, start: int | None) -> bool:
    """Whether process `pid`, started at `start`, may still run: False only when certain it does
    not (no such process, or one with another start time: the pid was reused)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: a process of another user holds the pid; alive
        pass
    now = start_time(pid)
    return start is None or now is None or now == start


def start_time(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot (/proc); None where not known."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
        # Fields after the command's ")" (which may hold spaces): state is field 3, starttime 22.
        return int(text[text.rindex(")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None
