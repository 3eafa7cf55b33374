"""The session host's listener at its end (server/backends/session_host.py): a shutdown wakes a
`serve` blocked in accept, which then returns without a traceback (`stop_listening` shuts down and
closes), and `stop_listening` is quiet on a socket that was never listening or is closed already.
(A close alone left the accept blocked: its thread ran until the interpreter's exit, where such
threads crashed mutmut's stats pass.)"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from pathlib import Path

from server.backends.session_host import SessionHost, stop_listening
from tests.support.server_process import wait_until

WAIT_S = 30.0
Served = tuple[socket.socket, threading.Thread, list[BaseException], Callable[[], None]]


def _served(tmp_path: Path) -> Served:
    """A listener with `serve` running on it, back in accept after one worker's connection."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "h.sock"))
    listener.listen()
    host = SessionHost()
    raised: list[BaseException] = []

    def serve() -> None:
        try:
            host.serve(listener)
        except BaseException as err:  # what the thread would have died of
            raised.append(err)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    worker = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    worker.connect(str(tmp_path / "h.sock"))
    wait_until(lambda: host._connections == 1, "the worker's connection to be accepted", WAIT_S)
    return listener, thread, raised, worker.close


def test_a_listener_shut_down_ends_serve_quietly_while_still_open(tmp_path: Path) -> None:
    listener, thread, raised, close_worker = _served(tmp_path)
    listener.shutdown(socket.SHUT_RDWR)  # not closed: serve sees EINVAL on an open listener
    thread.join(WAIT_S)
    close_worker()
    listener.close()
    assert not thread.is_alive() and raised == []


def test_stop_listening_ends_serve_and_closes_the_listener(tmp_path: Path) -> None:
    listener, thread, raised, close_worker = _served(tmp_path)
    stop_listening(listener)
    thread.join(WAIT_S)
    close_worker()
    assert not thread.is_alive() and raised == [] and listener.fileno() == -1


def test_stopping_a_socket_that_is_not_listening_or_closed_is_quiet() -> None:
    never = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stop_listening(never)  # its shutdown fails (not connected): closed all the same
    assert never.fileno() == -1
    stop_listening(never)  # closed already
    assert never.fileno() == -1
