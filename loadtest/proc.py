"""What Linux says of a process and the machine (/proc): the load tools' CPU and load figures."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path


def stat_fields(pid: int, tid: int | None = None) -> list[str]:
    """/proc's stat of process `pid` (or of its thread `tid`) after its name: [0] the state, [1]
    the parent, [2] the process group, [11] and [12] user and system clock ticks."""
    where = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    return Path(where).read_text().rsplit(")", 1)[1].split()


def cpu_s(pid: int, tid: int | None = None) -> float:
    """CPU seconds (user + system) process `pid` (all its threads), or its thread `tid`, has
    used so far."""
    fields = stat_fields(pid, tid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (a server's workers and session host), as /proc has them
    now (one that ends meanwhile is left out)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):  # (ended meanwhile)
            children.setdefault(int(stat_fields(int(stat.parent.name))[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo += children.get(found[-1], [])
    return found


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as /proc/loadavg writes them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


class Spawned:
    """A command started with posix_spawn in a process group of its own, its output (stdout and
    stderr) read on a thread. Not forked: a fork of a process whose gRPC has threads runs gRPC's
    fork handlers in the child, and one such child aborted (-6) before it could exec (a test run
    on 2026-12-04); posix_spawn runs no fork handlers. The group lets `stop` end what it started."""

    def __init__(self, command: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        read_fd, write_fd = os.pipe()  # both close-on-exec; the child's 1 and 2 are dup2'd copies
        actions = [(os.POSIX_SPAWN_DUP2, write_fd, 1), (os.POSIX_SPAWN_DUP2, write_fd, 2)]
        try:
            # SIGPIPE and SIGXFSZ as the defaults, as Popen's restore_signals leaves them (Python
            # ignores them for itself, and the child would inherit that).
            defaults = (signal.SIGPIPE, signal.SIGXFSZ)
            self.pid = os.posix_spawnp(
                command[0],
                list(command),
                {**os.environ, **(env or {})},  # `env`: variables added to this process's
                file_actions=actions,
                setpgroup=0,
                setsigdef=defaults,
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        self._chunks: list[bytes] = []
        self._code: int | None = None
        self._reader = threading.Thread(target=self._read, args=(read_fd,), daemon=True)
        self._reader.start()

    def _read(self, fd: int) -> None:
        with os.fdopen(fd, "rb") as pipe:
            while chunk := pipe.read1(65536):
                self._chunks.append(chunk)

    def wait(self, timeout_s: float) -> int | None:
        """The exit code once the command and whatever kept its output open have ended, or None
        after `timeout_s` (it still runs: `stop` it)."""
        self._reader.join(timeout_s)
        if self._reader.is_alive():
            return None
        return self._reaped()

    def stop(self) -> int:
        """SIGKILL to its whole group; its exit code."""
        if self._code is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
        self._reader.join()
        return self._reaped()

    def _reaped(self) -> int:
        if self._code is None:  # reaped once: a second wait or a stop after it answers the same
            self._code = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self._code

    @property
    def output(self) -> str:
        return b"".join(self._chunks).decode("utf-8", "replace")
