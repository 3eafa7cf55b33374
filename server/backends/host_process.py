"""The `--workers` parent's side of the session host (session_host.py): start it in a private
directory before the workers, hand them its socket, stop it after them.

Kept apart from session_host.py, which imports onnxruntime: the parent never loads a model.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

READY_LINE = "session host ready"  # session_host.py prints it once it listens
START_LIMIT_S = 120.0  # importing onnxruntime(-gpu) and its CUDA libraries takes seconds


class HostFailed(RuntimeError):
    pass


SHM_MIN_FREE = 2 << 30  # /dev/shm with less free (a container's 64 MiB default): the temp folder


def _segment_root() -> str | None:
    """/dev/shm where it can be written and has room (memory, not disk, for the batches' segments:
    a worker's resnet segment of 64 rows is 48 MiB), else the system's temp folder."""
    try:
        shm = os.statvfs("/dev/shm")
    except OSError:
        return None
    roomy = shm.f_bavail * shm.f_frsize >= SHM_MIN_FREE
    return "/dev/shm" if roomy and os.access("/dev/shm", os.W_OK | os.X_OK) else None


PREFIX = "sluiceway-host-"


def remove_stale_host_dirs(roots: tuple[str | None, ...] | None = None) -> list[Path]:
    """Remove this user's session host folders that no host listens in any more: those a parent
    killed by SIGKILL left (its host ended, its folder stayed, the workers' segments in it). A
    folder whose socket is not there yet is a host starting: kept unless older than START_LIMIT_S."""
    removed: list[Path] = []
    for root in roots if roots is not None else (_segment_root(), tempfile.gettempdir()):
        try:
            candidates = list(Path(root or tempfile.gettempdir()).glob(f"{PREFIX}*"))
        except OSError:
            continue
        for folder in candidates:
            if _stale(folder):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
    return removed


def _stale(folder: Path) -> bool:
    try:
        info = folder.stat()
    except OSError:
        return False
    if info.st_uid != os.getuid() or not folder.is_dir():
        return False
    sock = folder / "host.sock"
    if not sock.exists():
        return time.time() - info.st_mtime > START_LIMIT_S
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(sock))
        return False  # a host listens: in use
    except (ConnectionRefusedError, FileNotFoundError):
        return True
    except OSError:
        return False
    finally:
        probe.close()


class HostProcess:
    """The running session host: its private directory (0700) holds the socket and the workers'
    shared segments, and goes with it."""

    def __init__(self, env: dict[str, str], log_level: str, log_format: str = "text") -> None:
        remove_stale_host_dirs()
        self.directory = Path(tempfile.mkdtemp(prefix=PREFIX, dir=_segment_root()))
        self.socket = self.directory / "host.sock"
        command = [sys.executable, "-m", "server.backends.session_host", str(self.socket)]
        self.process = subprocess.Popen(
            [*command, "--log-level", log_level, "--log-format", log_format],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        ready = threading.Event()
        threading.Thread(target=self._pump, args=(ready,), daemon=True).start()
        if not ready.wait(START_LIMIT_S) or self.process.poll() is not None:
            self.stop()
            raise HostFailed("the session host did not start (see its lines above)")

    def _pump(self, ready: threading.Event) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.strip() == READY_LINE:
                ready.set()
            else:
                sys.stdout.write(line)
        ready.set()  # exited: the waiter sees poll() set

    def exited(self) -> bool:
        return self.process.poll() is not None

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM (it logs its merged-batch counts), then SIGKILL after `grace_s`; the folder goes."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)
