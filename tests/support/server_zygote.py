"""Test servers forked from a zygote that has imported the server (zygote_main.py), with a handle
that reads like the `subprocess.Popen` it replaces for ServerProcess.

A test process starts its zygote on its first server and keeps it to its end (a new one when the
process's own environment has changed since). A server given an environment of its own that differs
from the process's in anything but the `SLUICEWAY_*` settings (read when the server starts, not
when it imports) or pytest's `PYTEST_*` is started with Popen as before: HOME, PYTHONPATH, LD_* or
onnxruntime's variables can be read at import. SLUICEWAY_TEST_ZYGOTE=0 turns the zygote off.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

from tests.support.zygote_main import PASSED_SIGNALS

# Variables that may differ from the zygote's: the server's settings, and pytest's own per-test
# ones (PYTEST_CURRENT_TEST changes with every test).
READ_AT_START = ("SLUICEWAY_", "PYTEST_")


class ForkedServer:
    """A forked server: pid, stdout (text), poll/wait/send_signal/kill as Popen has them."""

    def __init__(self, pid: int, stdout: IO[str], status: int, argv: list[str]) -> None:
        self.pid = pid
        self.stdout = stdout
        self.args = argv
        self.returncode: int | None = None
        self._status = status  # the zygote writes the exit code here, then closes it

    def _collect(self, timeout_s: float | None) -> int | None:
        if self.returncode is not None:
            return self.returncode
        readable, _, _ = select.select([self._status], [], [], timeout_s)
        if not readable:
            return None
        said = os.read(self._status, 64)
        os.close(self._status)
        # No code: the zygote ended first (its test process is ending); -9 stands for "gone".
        self.returncode = int(said) if said else -signal.SIGKILL
        return self.returncode

    def poll(self) -> int | None:
        return self._collect(0)

    def wait(self, timeout: float | None = None) -> int:
        code = self._collect(timeout)
        if code is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return code

    def send_signal(self, number: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, number)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Zygote:
    """One test process's zygote, run in `repo_root`; `start` returns None where it cannot serve
    (use Popen)."""

    def __init__(self, repo_root: Path) -> None:
        self._repo_root = repo_root
        self._lock = threading.Lock()
        self._control: socket.socket | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._retired: list[tuple[socket.socket, subprocess.Popen[bytes]]] = []
        self._env: dict[str, str] = {}  # the zygote's: the test process's when it started
        self.refusal = ""  # why the last start was left to Popen, for a test to say
        self._broken = os.environ.get("SLUICEWAY_TEST_ZYGOTE", "1") == "0"

    def close(self) -> None:
        """End the zygotes (the close of a socket tells its zygote), for good; their servers go on,
        and their exit codes are no longer known (ForkedServer says -9)."""
        with self._lock:
            self._broken = True
            self._retire()
            for control, process in self._retired:
                control.close()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)
            self._retired.clear()

    def _retire(self) -> None:
        """Start no more servers from the current zygote. It goes on, and reaps those it started:
        its end would tell them all they had ended."""
        if self._control is not None and self._process is not None:
            self._retired.append((self._control, self._process))
        self._control, self._process = None, None

    def _started(self) -> socket.socket | None:
        if self._control is None and not self._broken:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self._env = dict(os.environ)
            self._process = subprocess.Popen(
                [sys.executable, "-m", "tests.support.zygote_main", str(theirs.fileno())],
                cwd=self._repo_root, env=self._env, pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            theirs.close()
            ours.settimeout(120)
            try:
                ready = ours.recv(64)
            except OSError:
                ready = b""
            if not ready:
                self._broken = True
                ours.close()
                return None
            self._control = ours
        return self._control

    def start(self, argv: list[str], env: dict[str, str]) -> ForkedServer | None:
        differs = _differs(env, dict(os.environ))
        if differs:  # this server's own environment: a command reads it from its start
            self.refusal = f"the server's environment sets {differs!r}"
            return None
        with self._lock:
            if self._control is not None and _differs(env, self._env):
                self._retire()  # the test process's environment changed since: a zygote of the new one
            control = self._started()
            if control is None:
                self.refusal = "the zygote is off or broken"
                return None
            read_end, write_end = os.pipe()
            status_read, status_write = os.pipe()
            try:
                ignored = [int(n) for n in PASSED_SIGNALS if signal.getsignal(n) == signal.SIG_IGN]
                request = json.dumps({"argv": argv, "env": env, "ignored_signals": ignored}).encode()
                socket.send_fds(control, [request], [write_end, status_write])
                pid = int(json.loads(control.recv(256))["pid"])
            except (OSError, ValueError, KeyError):
                self._broken = True
                for fd in (read_end, status_read):
                    os.close(fd)
                return None
            finally:
                os.close(write_end)
                os.close(status_write)
        stdout = open(read_end, encoding="utf-8", errors="replace")  # noqa: SIM115  # the handle's to close
        return ForkedServer(pid, stdout, status_read, argv)


def _differs(env: dict[str, str], other: dict[str, str]) -> str:
    """A variable the two set differently that the server may read at import; "" when none."""
    for key in sorted(set(env) | set(other)):
        if not key.startswith(READ_AT_START) and env.get(key) != other.get(key):
            return key
    return ""
