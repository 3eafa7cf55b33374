"""Run `sluiceway serve` as a real process on a free localhost port, for integration tests."""

from __future__ import annotations

import atexit
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from tests.support.server_zygote import ForkedServer, Zygote

REPO_ROOT = Path(__file__).resolve().parents[2]
# Demo models are built once per checkout and reused by every test run.
CACHE_DIR = REPO_ROOT / ".cache"
_READY = re.compile(r"sluiceway ready on ([\d.]+):(\d+)")
_METRICS = re.compile(r"sluiceway metrics on ([\d.]+):(\d+)/metrics")
_LISTENING = re.compile(r"sluiceway listening on ([\d.]+):(\d+)")
# This test process's zygote, started with its first server and kept to its end.
_ZYGOTE = Zygote(REPO_ROOT)
atexit.register(_ZYGOTE.close)


class ServerProcess:
    def __init__(self, *args: str, env: dict[str, str] | None = None, log_path: Path | None = None) -> None:
        # Metrics on a free port too (before `args`, which may override it): never 8002 in tests.
        self.args = ["--port", "0", "--metrics-port", "0", "--cache-dir", str(CACHE_DIR), *args]
        self.env = {**os.environ, **(env or {})}
        self.log_path = log_path
        self.process: subprocess.Popen[str] | ForkedServer | None = None
        self.port = 0
        self.metrics_port = 0  # from the "sluiceway metrics on" line, printed before the ready line
        self.lines: list[str] = []
        self._new_line = threading.Condition()  # told of each line the pump reads, and of the end
        self._ended = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 180.0) -> ServerProcess:
        # Forked from a process that has imported the server (server_zygote.py), else as a command.
        argv = [str(REPO_ROOT / "server" / "__main__.py"), "serve", *self.args]
        self.process = _ZYGOTE.start(argv, self.env)
        if self.process is None:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "server", "serve", *self.args],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        ready = threading.Event()

        def pump() -> None:
            assert self.process is not None and self.process.stdout is not None
            for line in self.process.stdout:
                with self._new_line:
                    self.lines.append(line)
                    self._new_line.notify_all()
                metrics = _METRICS.search(line)
                if metrics and not self.metrics_port:
                    self.metrics_port = int(metrics.group(2))
                match = _READY.search(line)
                if match:
                    self.port = int(match.group(2))
                    ready.set()
            with self._new_line:
                self._ended = True
                self._new_line.notify_all()
            ready.set()  # process ended

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(timeout_s) or self.port == 0:
            self.kill()
            raise RuntimeError("server did not start:\n" + "".join(self.lines[-50:]))
        return self

    def output(self) -> str:
        return "".join(self.lines)

    def wait_for_output(self, text: str, timeout_s: float = 60.0, times: int = 1) -> None:
        """Wait until the server has printed `text` (at least `times` times; AssertionError after
        `timeout_s`, or when the process ended without it). The server writes a log line before the
        answers that follow it, but this process reads the pipe on a thread of its own, which can
        lag behind those answers."""
        deadline = time.monotonic() + timeout_s
        with self._new_line:
            while self.output().count(text) < times:
                left = deadline - time.monotonic()
                if self._ended or left <= 0:
                    raise AssertionError(
                        f"the server did not print {text!r} {times} time(s):\n{self.output()[-3000:]}"
                    )
                self._new_line.wait(left)

    def listening_port(self, timeout_s: float = 120.0) -> int:
        """The port the server answers on, from its `sluiceway listening on` line, printed before
        the models load (for a test that watches the start while `start` runs on another thread):
        the server binds it itself, so no other test's server can take it first."""
        self.wait_for_output("sluiceway listening on", timeout_s)
        match = _LISTENING.search(self.output())
        assert match is not None, self.output()[-3000:]
        return int(match.group(2))

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, wait for a graceful exit, return the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        try:
            self.terminate()
        finally:
            self.kill()


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    """Check `condition` again and again until it holds; AssertionError naming `what` after
    `timeout_s` (a generous bound: it only ends a test that is failing anyway).

    For the state of another process (a server's ModelStatistics, how it answers a probe), which
    offers no event to wait on: each check is a round trip to that process, which paces the loop,
    so there is no sleep here. Wait on a threading.Condition or an asyncio event for state of this
    process.
    """
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout_s:g} s waiting for {what}")


async def wait_until_async(
    condition: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 60.0
) -> None:
    """`wait_until` for an async check (an AsyncClient call)."""
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout_s:g} s waiting for {what}")
