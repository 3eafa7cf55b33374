"""Start a sluiceway server on a free 127.0.0.1 port for one run, and stop it after."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from collections import Counter, deque
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE_DIR = REPO_ROOT / ".cache"
_READY = re.compile(r"sluiceway ready on ([\d.]+):(\d+)")
_METRICS = re.compile(r"sluiceway metrics on ([\d.]+:\d+/metrics)")


class SpawnedServer:
    """`sluiceway serve --port 0` (demo models unless `extra` says otherwise) as a child process."""

    ready_pattern = _READY  # the line that gives the bound address (a subclass may serve another)

    def __init__(
        self,
        cache_dir: Path = DEFAULT_CACHE_DIR,
        extra: Sequence[str] = (),
        watch: Sequence[str] = (),
        cwd: Path = REPO_ROOT,
    ) -> None:
        """`cwd`: the checkout whose server runs (another commit's worktree: loadtest/ab_perf_analyzer.py)."""
        self.cwd = cwd
        self.command = [
            sys.executable, "-m", "server", "serve", "--host", "127.0.0.1", "--port", "0",
            "--metrics-port", "0", "--cache-dir", str(cache_dir), *extra,
        ]  # fmt: skip
        self.process: subprocess.Popen[str] | None = None
        self.port = 0
        self.metrics_url: str | None = None  # from its "sluiceway metrics on" line
        self.tail: deque[str] = deque(maxlen=50)
        self.watch = tuple(watch)
        self.seen: Counter[str] = Counter()  # output lines holding each `watch` text

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 180.0) -> SpawnedServer:
        self.process = subprocess.Popen(
            self.command, cwd=self.cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        ready = threading.Event()

        def pump() -> None:
            # Keep draining the server's output so it never blocks on a full pipe.
            assert self.process is not None and self.process.stdout is not None
            for line in self.process.stdout:
                self.tail.append(line)
                self.seen.update(text for text in self.watch if text in line)
                metrics = _METRICS.search(line)
                if metrics:
                    self.metrics_url = f"http://{metrics.group(1)}"
                match = self.ready_pattern.search(line)
                if match:
                    self.port = int(match.group(2))
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(timeout_s) or self.port == 0:
            self.stop()
            raise RuntimeError("sluiceway server did not start:\n" + "".join(self.tail))
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def __enter__(self) -> SpawnedServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
