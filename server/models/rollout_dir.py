"""Under `--workers N`: the parent's private directory for the workers' rollout log
(server/models/rollout_share.py), made with a lock its owner holds for its whole life, and the
clean-up of those a parent killed by SIGKILL left in the temp directory.

The parent removes its directory at exit; SIGKILL gives it no exit. So each directory holds `lock`,
a file its parent holds an exclusive flock on from before the name appears until it exits (the fd
is close-on-exec: the workers, spawned by exec, never hold it). The kernel drops the lock when the
owner dies, as soon as it dies (a zombie not yet reaped holds none), and a flock is the file's
whatever the PID namespace: a pid said nothing in another container sharing /tmp, where a live
server's directory was taken for a dead one's. A parent starting removes the directories of its kind
(the prefix, a real directory of its own uid) whose lock it can take at once; one whose owner lives,
or that has no lock file (made by an older version, or being made right now), is never removed.
`owner` records the parent's pid and start time (/proc/<pid>/stat, in clock ticks since boot) for
the log line and for people; it decides nothing.

A directory without a lock file is never removed automatically because nothing proves its owner
gone: its pid means nothing in another PID namespace sharing /tmp (a live server's directory was
removed so), its age says nothing of an idle server that logs no change for hours, and the
pre-lock builds held nothing a survivor could test. The start names those not changed for
MAKING_S (so not one being made) in one warning line, for an operator to remove by hand.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

log = logging.getLogger(__name__)

DIR_PREFIX = "sluiceway-rollout-"
OWNER_FILE = "owner"  # "<pid> <start time>" ("-" when the start time is not known)
LOCK_FILE = "lock"  # flocked (exclusive) by the owner for its whole life
MAX_OWNER_BYTES = 64
MAKING_S = 60.0  # a directory without a lock file changed since then may be being made: not named
MAX_NAMED = 10  # lockless directories named in the start's line; the rest are counted


class ShareDir:
    """A share directory this process made and owns: its lock is held until `remove`."""

    def __init__(self, path: Path, lock_fd: int) -> None:
        self.path = path
        self._lock_fd: int | None = lock_fd

    def remove(self) -> None:
        """Remove the directory, then let go of its lock (so no clean-up races the removal)."""
        shutil.rmtree(self.path, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def temp_dir_fallback(environ: Mapping[str, str], chosen: str) -> str | None:
    """Why the temp directory `chosen` is not the TMPDIR `environ` names (Python's tempfile skips a
    TMPDIR it cannot write to, silently: a container given a TMPDIR of its own that is full or
    read-only shared the host's /tmp), or None when it is, or none is named."""
    named = environ.get("TMPDIR")
    if not named or os.path.realpath(named) == os.path.realpath(chosen):
        return None
    return f"TMPDIR {named} cannot be written (full, read-only or missing): using {chosen} instead"


def make_share_dir(temp_dir: Path | None = None) -> ShareDir:
    """A new private directory (mkdtemp: mode 0700) recording this process as its owner and locked
    by it: the lock file is locked before its name appears, so a clean-up never finds it free."""
    base = str(temp_dir) if temp_dir is not None else tempfile.gettempdir()
    directory = Path(tempfile.mkdtemp(prefix=DIR_PREFIX, dir=base))
    fallback = None if temp_dir is not None else temp_dir_fallback(os.environ, base)
    if fallback is not None:
        log.warning("the workers' share directory: %s", fallback)
    log.info("the workers' rollout changes are shared in %s", directory)
    start = start_time(os.getpid())
    temporary = directory / f".{OWNER_FILE}.tmp"
    temporary.write_text(f"{os.getpid()} {'-' if start is None else start}\n", encoding="ascii")
    os.replace(temporary, directory / OWNER_FILE)  # read whole or not at all by a clean-up
    locking = directory / f".{LOCK_FILE}.tmp"
    # O_CLOEXEC (Python's default, said anyway): a worker holding it would keep a dead parent's
    # directory "alive" for as long as it drains.
    fd = os.open(locking, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: free
        os.replace(locking, directory / LOCK_FILE)
    except BaseException:
        os.close(fd)
        raise
    return ShareDir(directory, fd)


def remove_stale_share_dirs(temp_dir: Path | None = None) -> list[Path]:
    """Remove this uid's share directories in `temp_dir` (default: the temp directory) whose owner
    no longer runs (their lock is free); the directories removed."""
    base = Path(temp_dir or tempfile.gettempdir())
    removed = []
    lockless = []
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
        if _lockless(path, info, time.time()):
            lockless.append(path)
            continue
        with _owner_gone(path) as gone:
            if not gone:
                continue
            owner = read_owner(path)  # read before the removal, said after it
            shutil.rmtree(path, ignore_errors=True)  # under the lock: its owner is gone for good
        if not path.exists():
            removed.append(path)
            who = "an unrecorded process" if owner is None else f"server process {owner[0]}"
            log.warning("removed %s: left by %s, which is gone", path, who)
    if lockless:
        log.warning("%s", lockless_line(sorted(lockless)))
    return removed


def _lockless(path: Path, info: os.stat_result, now: float) -> bool:
    """Whether `path` (lstat `info`) has no lock file and was not changed for MAKING_S: a
    pre-lock build's directory, not one being made now (its lock is renamed in within moments)."""
    try:
        os.lstat(path / LOCK_FILE)
    except FileNotFoundError:
        return now - info.st_mtime >= MAKING_S
    except OSError:
        return False
    return False


def lockless_line(paths: list[Path]) -> str:
    """The start's one line naming the share directories without a lock file (up to MAX_NAMED)."""
    named = ", ".join(str(p) for p in paths[:MAX_NAMED])
    more = f" and {len(paths) - MAX_NAMED} more" if len(paths) > MAX_NAMED else ""
    return (
        f"{len(paths)} workers' share directories without a lock file (made by a build before the "
        f"lock file) kept, since whether their server still runs cannot be told (a pid says nothing "
        f"in another PID namespace): {named}{more}; remove each by hand once no such server runs"
    )


@contextlib.contextmanager
def _owner_gone(directory: Path) -> Iterator[bool]:
    """True, holding the directory's lock, when its owner is gone: the lock file is a regular file
    whose exclusive flock is free; False while the owner runs or without a lock file."""
    try:
        # O_NONBLOCK: something else put there (a FIFO) never blocks the start.
        fd = os.open(directory / LOCK_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:  # none (an older version's, or one being made), or a link
        yield False
        return
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            yield False
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # BlockingIOError: its owner holds it
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


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


def start_time(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot (/proc); None where not known."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
        # Fields after the command's ")" (which may hold spaces): state is field 3, starttime 22.
        return int(text[text.rindex(")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None
