"""`sluiceway serve --workers N`: N server processes sharing one port through SO_REUSEPORT.

Python serves gRPC on one core per process, so several processes are how a server uses several
cores. The parent checks the port is free, then holds it with an SO_REUSEPORT socket (so no
other program can take it while the workers run), spawns the workers with `reuse_port` set and
onnxruntime threads divided between them, reports ready once all are, forwards SIGTERM/SIGINT,
and exits 0 after they do. A worker that dies takes the others down: the parent exits 1. It also
makes the private directory through which the workers follow one another's rollout changes
(server/models/rollout_dir.py), first removing those that parents killed by SIGKILL left.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from server.announce import announce, message_of
from server.backends.host_process import HostFailed, HostProcess
from server.models.rollout_dir import make_share_dir, remove_stale_share_dirs
from server.settings import ServerSettings
from server.settings_rules import unbracketed
from server.start_signals import exit_terminated, stop_was_asked

_STOPS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # forwarded to the workers: a drain
_READY = re.compile(r"sluiceway ready on \S+:(\d+) \(models: (.*)\)")
STOP_GRACE_S = 1.0  # after a worker's exit, how long the parent looks for its own stop signal


class WorkerFailed(RuntimeError):
    pass


def hold_port(host: str, port: int) -> socket.socket:
    """Check nothing holds host:port, then hold it with an SO_REUSEPORT socket.

    Raises OSError when the port is in use. Port 0 picks a free port.
    """
    host = unbracketed(host)  # "[::1]" is grpc's form, not a socket's
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        # Without SO_REUSEPORT: fails when a socket holds the port. With SO_REUSEADDR, as grpc binds:
        # the connections a stopped server closed (TIME_WAIT, up to 60 s) do not hold it, and a
        # restart right after a stop under load had failed "Address already in use".
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
        port = probe.getsockname()[1]
    finally:
        probe.close()
    held = socket.socket(family, socket.SOCK_STREAM)
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    held.bind((host, port))
    return held


def worker_environment(settings: ServerSettings, port: int, repository: Path) -> dict[str, str]:
    """SLUICEWAY_* variables that give a worker the parent's settings, sharing its port."""
    threads = settings.intra_op_threads or max(1, (os.cpu_count() or 1) // settings.workers)
    values = settings.model_dump(mode="json")
    if "execution_providers" not in settings.model_fields_set:
        # Left to the workers' default: given, it decides where a config without instance_group
        # runs; not given, Triton's default does (server/backends/instance_groups.py).
        del values["execution_providers"]
    values.update(
        port=port, workers=1, reuse_port=True, model_repository=str(repository), intra_op_threads=threads
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEWAY_")}
    for key, value in values.items():
        if value is not None:
            env[f"SLUICEWAY_{key.upper()}"] = _env_value(value)
    return env


def worker_metrics_port(settings: ServerSettings, index: int) -> int:
    """Worker `index`'s metrics port: metrics_port + index, so none binds another's (0: free ones)."""
    return settings.metrics_port + index if settings.metrics_port else 0


def _env_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value))
    return str(value)


def run_workers(settings: ServerSettings, repository: Path) -> int:
    """Run settings.workers server processes on one port until SIGTERM/SIGINT; return the exit code."""
    held = hold_port(settings.host, settings.port)
    port = held.getsockname()[1]
    env = worker_environment(settings, port, repository)
    # Where a worker's automatic rollback is written for the others (server/models/rollout_share.py):
    # private to this run (mkdtemp: mode 0700), locked by this process while it lives, removed at
    # exit; those of parents killed by SIGKILL (their lock free) are removed first.
    remove_stale_share_dirs()
    share_dir = make_share_dir()
    env["SLUICEWAY_ROLLOUT_SHARE_DIR"] = str(share_dir.path)
    # A handler before anything else: the kernel may hand the process's SIGTERM to any of its
    # threads (numpy's and onnxruntime's libraries start their own), and there the default action
    # killed the parent at once, leaving its workers serving. The handler only notes the request;
    # this thread acts on it (the workers reset it on exec).
    requested: list[int] = []
    for sig in _STOPS:  # SIGHUP had left the workers serving
        if sig == signal.SIGHUP and signal.getsignal(sig) is signal.SIG_IGN:
            continue  # under nohup (the workers inherit the ignoring too)
        previous = signal.signal(sig, lambda signum, frame: requested.append(signum))
        if stop_was_asked(previous):  # a start-up SIGTERM whose Terminated was lost on the way
            requested.append(sig)
    # The session host first (--shared-sessions): the workers open their sessions there.
    host: HostProcess | None = None
    if settings.shared_sessions != "off" and not requested:
        try:
            host = HostProcess(env, settings.log_level, settings.log_format)
        except HostFailed:
            held.close()
            share_dir.remove()
            raise
        env["SLUICEWAY_SESSION_HOST"] = str(host.socket)
        env["SLUICEWAY_SESSION_HOST_THREADS"] = str(settings.intra_op_threads)  # one process: all cores
    # None started when the stop came first (a start-up SIGTERM noted above).
    children = [] if requested else [_spawn(settings, env, i) for i in range(settings.workers)]
    ready = threading.Semaphore(0)
    models: dict[int, str] = {}  # each worker's ready line's models, by its index

    def pump(child: subprocess.Popen[str], index: int) -> None:
        assert child.stdout is not None
        for line in child.stdout:
            match = _READY.search(message_of(line))  # plain, or a JSON object under JSON logs
            if match:
                models[index] = match.group(2)
                ready.release()
            else:
                sys.stdout.write(line)
        ready.release()  # exited: wake the parent so it notices

    for index, child in enumerate(children):
        threading.Thread(target=pump, args=(child, index), daemon=True).start()
    try:
        # Wake at least every 0.2 s: a stop noted by the handler on another thread is seen then.
        announced = False
        while not requested:
            ready.acquire(timeout=0.2)  # a worker ready, or one that exited (its pump ended)
            if any(c.poll() is not None for c in children) or (host is not None and host.exited()):
                if _stop_was_signalled(requested) or _stop_arrives(requested, STOP_GRACE_S):
                    # A process-group signal (Ctrl-C, `timeout`, systemd's control-group kill)
                    # reaches the workers too, and an idle one drains and exits during this
                    # wait: a stop asked for, not a failure (it had exited 1). A worker exiting
                    # with no signal to the parent still is one.
                    break
                what = "the session host" if host is not None and host.exited() else "a worker"
                raise WorkerFailed(f"{what} exited" + ("" if announced else " during start-up"))
            if not announced and len(models) == len(children):  # every worker said ready
                announced = True
                workers = f"{port} (models: {ready_models(models)})"
                announce(f"sluiceway ready on {settings.host}:{workers}", settings.log_format == "json")
        code = 0
    except WorkerFailed as exc:
        from server.cli import fatal_line  # not at the top: the CLI imports this module

        print(
            fatal_line(f"sluiceway: {exc}; stopping the others", settings.log_format == "json"),
            file=sys.stderr,
        )
        code = 1
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(settings.shutdown_grace_s + 10)
            except subprocess.TimeoutExpired:
                child.kill()
        if host is not None:  # after the workers: their draining batches still run there
            host.stop()
        held.close()
        share_dir.remove()
    if not children:  # stopped before any worker started: the start-up line, exit 0
        return exit_terminated(signal.Signals(requested[0]).name)
    return code


def ready_models(by_worker: dict[int, str]) -> str:
    """The parent's ready line's models: the workers' own, once where they agree. Each worker
    loads the repository itself; a model one of them failed to load (its files changed during the
    start) had been left out, the first worker's line repeated for all."""
    lines = [by_worker[i] for i in sorted(by_worker)]
    if len(set(lines)) == 1:
        return f"{lines[0]}; {len(lines)} workers"
    each = " | ".join(f"worker {i}: {line}" for i, line in enumerate(lines))
    return f"{len(lines)} workers, not alike: {each}"


def _stop_arrives(requested: list[int], within_s: float) -> bool:
    """Whether a stop signal is noted within `within_s` of a worker's exit. A process-group signal
    reaches the workers and the parent alike, but the parent's own can be handled after an idle
    worker has drained and exited: in one of five runs of the test command on 2026-12-04 the
    parent took that exit for a failure (exit 1, tests/integration/test_workers_group_stop.py)
    with the group's SIGTERM on its way. Only a failure waits this long; a stop is seen at once."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        time.sleep(0.02)  # a signal for this thread ends the sleep at once; its handler then runs
        if _stop_was_signalled(requested):
            return True
    return False


def _stop_was_signalled(requested: list[int]) -> bool:
    """Whether the parent got SIGTERM/SIGINT/SIGHUP: noted by its handler, or still pending.

    Called as a function so that a handler the C level already ran on another thread runs here
    first (Python runs them at a call); a signal the kernel holds for the process (the parent was
    stopped, or none of its threads has run since) is in sigpending, not yet in `requested`.
    """
    return bool(requested) or bool(signal.sigpending() & set(_STOPS))


def _spawn(settings: ServerSettings, env: dict[str, str], index: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "server", "serve"],
        env={
            **env,
            "SLUICEWAY_METRICS_PORT": str(worker_metrics_port(settings, index)),
            "SLUICEWAY_WORKER_INDEX": str(index),
        },
        stdout=subprocess.PIPE,
        text=True,
    )


def die_with_parent() -> None:
    """In a worker: get SIGTERM (a drain) when the parent dies, however it dies. A parent killed
    by SIGKILL left its workers serving on the port, and a restart found it taken. Linux only."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    # (No check that the parent is still there: in a container it is PID 1, the usual parent
    # of an orphan, and the window between fork and this call is start-up's first moments.)
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
