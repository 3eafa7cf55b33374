"""Survivors of the 2026-12-05 whole-scope mutation run in server/backends/session_host.py that a
test can tell apart: main's wait for its serve thread after a stop, bounded by STOP_LIMIT_S, and
its listener's backlog. main runs here with a serve that accepts nothing until the test says
(the mutants killed: `main__mutmut_95`, `main__mutmut_64`)."""

from __future__ import annotations

import contextlib
import errno
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.backends import session_host
from server.backends.session_host import SessionHost
from tests.support.server_process import wait_until
from tests.unit.test_mutants_host_side import Signals

WAIT_S = 30.0


@contextlib.contextmanager
def _main_with_a_stuck_serve(path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """main serving on `path` in a thread, its serve thread accepting nothing until the block ends;
    the dict holds the handlers main installed, main's thread, what it returned and the release."""
    import server.observability.logs
    import server.runtime_check
    import server.workers

    monkeypatch.setattr(server.observability.logs, "configure_logging", lambda *a: None)
    monkeypatch.setattr(server.workers, "die_with_parent", lambda: None)
    monkeypatch.setattr(server.runtime_check, "ensure_runtime", lambda preload: None)
    monkeypatch.setattr(session_host, "print", lambda *a, **kw: None, raising=False)
    monkeypatch.setattr(session_host, "STOP_LIMIT_S", 0.0)  # (no worker connected: nothing waited for)
    signals = Signals()
    monkeypatch.setattr(session_host, "signal", signals)
    serving, release = threading.Event(), threading.Event()

    def stuck(host: SessionHost, listener: Any) -> None:  # a serve that ends only when the test says
        serving.set()
        release.wait(2 * WAIT_S)  # (past the test's own bound on main: never the first to give up)

    monkeypatch.setattr(SessionHost, "serve", stuck)
    said: list[int] = []
    thread = threading.Thread(target=lambda: said.append(session_host.main([str(path)])))
    thread.start()
    try:
        wait_until(lambda: len(signals.handlers) == 3 and serving.is_set(), "the host to serve", WAIT_S)
        yield {"handlers": signals.handlers, "thread": thread, "said": said, "release": release}
    finally:
        signals.handlers[signal.SIGTERM](signal.SIGTERM, None)
        release.set()
        thread.join(WAIT_S)


def test_main_returns_after_a_stop_even_with_its_serve_thread_stuck(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a stop, main waits for its serve thread at most STOP_LIMIT_S (here 0: not at all):
    a serve that does not end (an accept the shutdown did not wake) never holds the host's exit.
    Joined without a bound, main waited for it for ever."""
    with _main_with_a_stuck_serve(tmp_path / "h.sock", monkeypatch) as host:
        host["handlers"][signal.SIGTERM](signal.SIGTERM, None)
        host["thread"].join(WAIT_S)
        assert host["said"] == [0]
        assert not host["release"].is_set()  # its serve thread was still in serve when main returned


def test_the_listener_holds_256_connections_not_yet_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every worker's instances connect at a start or a reload while the host may be busy opening
    sessions: the backlog main listens with is 256. Linux queues a Unix listener's backlog plus one
    unaccepted connections and refuses the next (EAGAIN to a non-blocking connect)."""
    if int(Path("/proc/sys/net/core/somaxconn").read_text()) < 257:
        pytest.skip("somaxconn caps every backlog below 257 here")
    path = tmp_path / "h.sock"
    clients: list[socket.socket] = []
    try:
        with _main_with_a_stuck_serve(path, monkeypatch):
            refused = None
            while refused is None and len(clients) < 300:
                client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                client.setblocking(False)
                try:
                    client.connect(str(path))
                except BlockingIOError as err:
                    refused = err.errno
                    client.close()
                else:
                    clients.append(client)
            assert refused == errno.EAGAIN
            assert len(clients) == 256 + 1
    finally:
        for client in clients:
            client.close()
