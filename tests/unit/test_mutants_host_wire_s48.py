"""Survivors of the 2026-12-05 whole-scope mutation run in server/backends/host_wire.py that a test
can tell apart: the pickle protocol a message goes out in (5, whose arrays are written from their
own buffers) and how long an idle host connection waits for a message before it looks at its
mappings (IDLE_S, in milliseconds) (the mutants killed: `send__mutmut_3/5`,
`PruningReceiver.receive__mutmut_8/11`)."""

from __future__ import annotations

import pickle
import pickletools
import select
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from server.backends import host_wire
from server.backends.host_wire import PruningReceiver, Segment, SegmentMaps, send


def test_a_message_goes_out_in_pickle_protocol_5_its_arrays_as_their_own_bytes() -> None:
    """A run's reply carries its outputs: protocol 5 writes each array's bytes straight from its
    buffer (one BYTEARRAY8), where the default protocol (4 on Python 3.11) first copied each into a
    bytes object. The peer reads the same message either way; the frame tells them apart."""
    outputs = {"y": np.arange(1000, dtype=np.float32)}
    here, there = socket.socketpair()
    try:
        send(here, ("ok", outputs))
        (length,) = host_wire._LENGTH.unpack(there.recv(host_wire._LENGTH.size, socket.MSG_WAITALL))
        data = there.recv(length, socket.MSG_WAITALL)
    finally:
        here.close()
        there.close()
    assert len(data) == length
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(data)]
    assert ops[0] == ("PROTO", pickle.HIGHEST_PROTOCOL) and pickle.HIGHEST_PROTOCOL == 5
    assert [arg for name, arg in ops if name == "BYTEARRAY8"] == [outputs["y"].tobytes()]
    answer = pickle.loads(data)
    assert answer[0] == "ok"
    np.testing.assert_array_equal(answer[1]["y"], outputs["y"])


class _Poller:
    """select.poll as PruningReceiver uses it: each wait's timeout recorded; the first `idle`
    waits see no message, then the connection is readable."""

    def __init__(self, idle: int) -> None:
        self.idle = idle
        self.timeouts: list[int] = []

    def register(self, conn: socket.socket, events: int) -> None:
        self.fd, self.events = conn.fileno(), events

    def poll(self, timeout: int) -> list[tuple[int, int]]:
        self.timeouts.append(timeout)
        if len(self.timeouts) <= self.idle:
            return []
        return [(self.fd, self.events)]


def _idle_waits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, idle_s: float | None) -> list[int]:
    """The timeouts of an idle host connection's waits (one segment mapped, two waits with no
    message, then one), with the connection's IDLE_S set to `idle_s` (None: the class's)."""
    poller = _Poller(idle=2)
    monkeypatch.setattr(host_wire, "select", SimpleNamespace(POLLIN=select.POLLIN, poll=lambda: poller))
    segment = Segment(tmp_path / "s", 4096, create=True)
    maps = SegmentMaps()
    if idle_s is not None:
        maps.IDLE_S = idle_s
    maps.get(str(segment.path), 4096)
    host_end, worker_end = socket.socketpair()
    try:
        messages = PruningReceiver(host_end, maps)
        assert poller.events == select.POLLIN
        send(worker_end, ("counts", b"k"))
        assert messages.receive() == ("counts", b"k")
    finally:
        host_end.close()
        worker_end.close()
        maps.close()
        segment.close()
    return poller.timeouts


def test_an_idle_connection_looks_every_idle_s_in_milliseconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """IDLE_S (1 s) is each wait's timeout, 1000 ms, not a millisecond more."""
    assert SegmentMaps.IDLE_S == 1.0
    assert _idle_waits(tmp_path, monkeypatch, None) == [1000, 1000, 1000]


def test_an_idle_s_of_one_millisecond_waits_one_millisecond(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The floor of 1 ms only keeps a wait from being 0 (a spin): an IDLE_S of 1 ms is kept as is,
    not raised to 2 ms."""
    assert _idle_waits(tmp_path, monkeypatch, 0.001) == [1, 1, 1]


def test_an_idle_s_under_half_a_millisecond_still_waits_one_millisecond(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rounded to 0 ms a wait would return at once and the loop spin: it waits 1 ms at least."""
    assert _idle_waits(tmp_path, monkeypatch, 0.0001) == [1, 1, 1]
