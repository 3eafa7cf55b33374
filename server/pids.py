"""Whether the process that left a file behind still runs: files named with their writer's pid
(sample chunks being written, uploaded model files) are removed once it is gone."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """True while `pid` runs (another worker or server sharing the directory); this process's own
    pid is False: a file of ours from before (a pid reused after a restart) is stale."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def named_pid(name: str, index: int) -> int | None:
    """The pid at `index` of a '-'-separated file name, or None."""
    parts = name.split("-")
    try:
        return int(parts[index])
    except (IndexError, ValueError):
        return None
