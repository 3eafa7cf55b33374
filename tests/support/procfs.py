"""Processes as Linux's /proc shows them: the children of a process, and whether one still runs."""

from __future__ import annotations

from pathlib import Path

PROC = Path("/proc")


def _state_and_parent(pid: int | str) -> tuple[str, int] | None:
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:  # it exited meanwhile
        return None
    # "pid (comm) state ppid ...": comm may hold spaces, so split after its closing bracket.
    state, ppid = stat.rsplit(")", 1)[1].split()[:2]
    return state, int(ppid)


def children_of(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is `pid`."""
    found = []
    for entry in PROC.iterdir():
        seen = _state_and_parent(entry.name) if entry.name.isdigit() else None
        if seen is not None and seen[1] == pid and seen[0] != "Z":
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Running, or stopped, but neither gone nor a zombie."""
    seen = _state_and_parent(pid)
    return seen is not None and seen[0] != "Z"


def thread_count(pid: int) -> int:
    """Threads of process `pid` (0 once it is gone)."""
    try:
        return len(list((PROC / str(pid) / "task").iterdir()))
    except OSError:
        return 0
