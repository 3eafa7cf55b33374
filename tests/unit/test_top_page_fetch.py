"""`sluiceway top` reads a /metrics page bounded in size and in time for the whole answer
(server/observability/page_fetch.py), against real sockets on 127.0.0.1: an endless body is read
to its bound, and a server trickling its answer a byte at a time is cut at the deadline (urllib's
timeout is per read: it had held top for as long as the server liked)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from server.observability.top_reader import Sample, read_metrics

MAX_SENDS = 6000  # every writer below stops here at the latest (or when the reader closes)
HEADER = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n"


def _serve_once(write: Callable[[socket.socket], None]) -> Iterator[str]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def answer() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(4096)
            with contextlib.suppress(OSError):  # the reader closed (or cut) its end
                write(connection)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/metrics"
    thread.join(timeout=30)
    listener.close()


@pytest.fixture
def endless() -> Iterator[str]:
    def write(connection: socket.socket) -> None:
        connection.sendall(HEADER)
        chunk = b"# junk\n" * (1 << 17)
        for _ in range(MAX_SENDS):
            connection.sendall(chunk)

    yield from _serve_once(write)


@pytest.fixture
def trickle() -> Iterator[str]:
    """A server sending its answer one byte every 50 ms, headers first."""
    wait = threading.Event()

    def write(connection: socket.socket) -> None:
        for byte in HEADER + b"# junk\n" * MAX_SENDS:
            connection.sendall(bytes([byte]))
            wait.wait(0.05)

    yield from _serve_once(write)


def test_an_endless_metrics_page_is_read_to_its_bound_and_said_in_one_line(endless: str) -> None:
    sample = Sample(at=0.0)
    read_metrics(endless, sample, timeout_s=60, counts=True)
    assert sample.metrics_error == (
        f"{endless}: the answer is larger than 67108864 bytes (64 MiB), the limit for a "
        "/metrics page: is --metrics-url the server's /metrics?"
    )
    assert sample.success == {} and sample.buckets == {}


def test_a_trickling_metrics_page_is_cut_at_the_deadline_not_parsed_in_part(trickle: str) -> None:
    sample = Sample(at=0.0)
    read_metrics(trickle, sample, timeout_s=1)  # each read alone comes well within 1 s
    assert sample.metrics_error == f"{trickle}: the whole answer took longer than 1 s"
    assert sample.success == {} and sample.buckets == {}
