"""loadtest/stall_view.py: what a stopped load tool was waiting on, from /proc, over real
localhost sockets (a request the server never read, an answer the tool never read)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.stall_view import (
    busy_view,
    connections_view,
    group_members,
    stall_view,
    tcp_sockets,
    threads_view,
)

CHUNK = 64 * 1024


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    with server:
        yield server


def wait_for(check: object, what: str) -> None:
    """Poll a kernel figure (a queue filling); bounded, not a synchronisation of our own code."""
    deadline = time.monotonic() + 10.0
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not seen within 10 s: {what}")
        time.sleep(0.01)


def test_the_table_is_read_field_by_field(tmp_path: Path) -> None:
    table = tmp_path / "tcp"
    table.write_text(
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 0100007F:1F41 0100007F:9C40 01 00000010:00000200 00:00000000 00000000     0        0 4242 1\n"
        "   1: 0100007F:1F42 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1\n"
    )
    first, second = tcp_sockets((table, tmp_path / "absent"))
    assert (first.local_port, first.remote_port, first.state) == (8001, 40000, "01")
    assert (first.unsent, first.unread, first.inode) == (16, 512, 4242)
    assert (second.local_port, second.state, second.inode) == (8002, "0A", 77)


def test_a_request_the_server_never_read_is_counted_unread_by_the_server(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    with socket.create_connection(("127.0.0.1", port)) as client:
        accepted, _ = listener.accept()
        with accepted:
            client.sendall(b"x" * CHUNK)  # the server end never reads it
            wait_for(lambda: "by the server 65536" in connections_view([os.getpid()], port), "unread")
            said = connections_view([os.getpid()], port)
            assert said.startswith(f"1 connections to port {port}: bytes unread by the tool 0,")
            assert "(1 server ends found)" in said


def test_an_answer_the_tool_never_read_is_counted_unread_by_the_tool(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    with socket.create_connection(("127.0.0.1", port)):
        accepted, _ = listener.accept()
        with accepted:
            accepted.sendall(b"y" * 1000)  # the client end never reads it
            wait_for(lambda: "unread by the tool 1000," in connections_view([os.getpid()], port), "unread")
            assert "by the server 0;" in connections_view([os.getpid()], port)


def test_another_process_connections_and_a_port_nobody_holds(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    assert connections_view([os.getpid()], port) == f"no established connection to port {port}"
    code = (
        f"import socket, time; s = socket.create_connection(('127.0.0.1', {port})); "
        "print(1, flush=True); time.sleep(30)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"1\n"
        accepted, _ = listener.accept()
        with accepted:
            # Only the process group's own sockets count: this process holds the server end alone.
            assert connections_view([os.getpid()], port) == f"no established connection to port {port}"
            assert group_members(child.pid) == [child.pid]
            # Asleep in time.sleep once its print is done (polled: the kernel's state of it).
            wait_for(lambda: threads_view([child.pid]).startswith("1 threads: 1 S "), "asleep")
            said = stall_view(child.pid, port)
            assert said.startswith(f"1 connections to port {port}:"), said
            assert "; 1 threads: 1 S " in said, said  # asleep in time.sleep
    finally:
        child.kill()
        child.wait()


def test_threads_are_counted_by_state_and_wait() -> None:
    said = threads_view([os.getpid()])
    assert re.fullmatch(r"\d+ threads: (\d+ [A-Z] \S+(, )?)+", said), said
    assert re.search(r"\b\d+ R ", said), said  # the thread reading its own state runs
    assert threads_view([2**22 + 12345]) == "its threads could not be read"


@pytest.mark.parametrize(
    ("code", "busy"), [("import time; time.sleep(60)", False), ("while True: pass", True)]
)
def test_a_busy_main_thread_is_told_from_a_waiting_one(code: str, busy: bool) -> None:
    """perf_analyzer copying its records falls behind, running; one waiting on an answer sleeps."""
    started = f"import time\nprint(1, flush=True)\n{code}"
    child = subprocess.Popen([sys.executable, "-c", started], stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"1\n"  # started: no import left
        said = busy_view(group_members(child.pid), 0.5)
        match = re.fullmatch(
            r"main thread (\S), ([0-9.]+) s of CPU in 0.5 s; memory ([0-9.]+) GiB, ([+-]\d+) MiB meanwhile",
            said,
        )
        assert match is not None, said
        state, cpu = match.group(1), float(match.group(2))
        if busy:
            assert state == "R" and cpu > 0.0, said
        else:
            assert state == "S" and cpu < 0.05 and abs(int(match.group(4))) <= 1, said  # (its print's end)
        assert 0.0 < float(match.group(3)) < 1.0
    finally:
        child.kill()
        child.wait()
    assert busy_view([]) == "no process left"


def test_a_view_that_fails_says_so_and_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    import loadtest.stall_view as stall

    def broken(pgid: int) -> list[int]:
        raise ValueError("an odd /proc line")

    monkeypatch.setattr(stall, "group_members", broken)
    assert stall.stall_view(1, 1) == "no view (ValueError: an odd /proc line)"
