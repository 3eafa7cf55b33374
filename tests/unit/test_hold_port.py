"""`--workers N`'s parent holds the port (server/workers.py `hold_port`): refused while a socket
holds it, taken when only connections a stopped server closed linger there (TIME_WAIT): a restart
right after a stop under load had failed "Address already in use" for up to 60 s."""

from __future__ import annotations

import socket

import pytest

from server.workers import hold_port


def time_wait_port() -> int:
    """A port whose listener is closed and whose server side of a connection is in TIME_WAIT."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = int(listener.getsockname()[1])
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    accepted.close()  # the server closes first: its side goes to TIME_WAIT once the client closes
    assert client.recv(1) == b""
    client.close()
    listener.close()
    return port


def test_a_port_with_only_closed_connections_is_taken() -> None:
    port = time_wait_port()
    held = hold_port("127.0.0.1", port)
    try:
        assert held.getsockname()[1] == port
    finally:
        held.close()


def test_a_port_a_socket_listens_on_is_refused() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        with pytest.raises(OSError):
            hold_port("127.0.0.1", listener.getsockname()[1])
    finally:
        listener.close()
