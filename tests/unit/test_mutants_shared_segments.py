"""What the mutation run of the session host's shared segments (server/backends/segment_pool.py,
host_wire.py) found untested: a segment's size and reuse at the edges, the wire's framing, where a
tensor may lie in a segment, and which mappings the host keeps. Split from
test_mutants_shared_sessions.py (a module's 400 lines); tests/MUTANTS.md lists the mutants."""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import threading
from pathlib import Path

import numpy as np
import pytest

from server.backends import host_wire, segment_pool
from server.backends.host_wire import HostGone, Segment, SegmentMaps, TensorPlace, receive, send
from server.backends.segment_pool import GROW, RECENT_S, SegmentPool, grown, remove
from tests.unit.test_segment_pool import Clock, files

MIB = 1 << 20


def test_a_segment_is_made_a_quarter_larger_in_whole_mib() -> None:
    assert grown(0) == grown(1) == GROW == MIB
    assert grown(3 * MIB) == 4 * MIB  # 3.75 MiB
    assert grown(4 * MIB) == 5 * MIB  # exactly 5 MiB: not rounded up past it
    assert grown(4 * MIB + 4) == 6 * MIB


def test_a_free_segment_of_exactly_the_size_asked_is_reused(tmp_path: Path) -> None:
    pool = SegmentPool(tmp_path, "seg", Clock())
    first = pool.take(3 * MIB)
    pool.give_back(first)
    assert pool.take(first.size) is first
    pool.close()


def test_a_free_segment_is_kept_up_to_twice_the_recent_batches_and_no_more(tmp_path: Path) -> None:
    """Recent batches of 1 MiB make 2 MiB segments: a free one of 4 MiB is kept, one of 5 MiB goes."""
    clock = Clock()
    pool = SegmentPool(tmp_path, "seg", clock)
    four, five = pool.take(3 * MIB), pool.take(4 * MIB)
    assert (four.size, five.size) == (4 * MIB, 5 * MIB)
    pool.give_back(four)
    pool.give_back(five)
    clock.now += RECENT_S + 1.0
    pool.give_back(pool.take(MIB))  # the smallest that fits: the 4 MiB one, kept
    assert pool.free_sizes() == [4 * MIB]
    assert files(tmp_path) == {four.path.name: 4 * MIB}
    pool.close()


def test_a_segment_given_back_after_close_is_removed(tmp_path: Path) -> None:
    pool = SegmentPool(tmp_path, "seg", Clock())
    held = pool.take(1000)
    pool.close()
    pool.give_back(held)
    assert pool.free_sizes() == [] and files(tmp_path) == {}


def test_a_segment_whose_file_is_gone_is_removed_quietly(tmp_path: Path) -> None:
    segment = Segment(tmp_path / "s", 4096, create=True)
    segment.path.unlink()
    remove(segment)  # no FileNotFoundError
    assert files(tmp_path) == {}


def test_a_message_crosses_the_socket_whole_and_a_closed_peer_is_host_gone() -> None:
    a, b = socket.socketpair()
    try:
        message = ("run", b"\0" * 50_000, [1, 2, 3])  # (within the socket's buffer)
        send(a, message)
        assert receive(b) == message
        a.close()
        with pytest.raises(HostGone, match=r"^the session host closed the connection$"):
            receive(b)
    finally:
        a.close()
        b.close()


class Trickle:
    """A socket that hands out one byte a read (as a busy peer's stream may); `nbytes` 0 is the
    whole buffer, as socket.recv_into takes it."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def recv_into(self, view: memoryview, nbytes: int = 0) -> int:
        assert nbytes <= len(view)
        count = min(1, nbytes or len(view), len(self.data))
        view[:count] = self.data[:count]
        self.data = self.data[count:]
        return count


def test_a_message_read_in_pieces_is_put_together_in_order() -> None:
    a, b = socket.socketpair()
    send(a, {"k": list(range(20))})
    data = b.recv(1 << 16)
    a.close()
    b.close()
    assert receive(Trickle(data)) == {"k": list(range(20))}  # type: ignore[arg-type]
    with pytest.raises(HostGone):
        receive(Trickle(data[:-1]))  # type: ignore[arg-type]


def test_a_length_past_the_bound_is_refused_and_one_at_it_read(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = socket.socketpair()
    try:
        send(a, b"12345")
        size = len(b.recv(1 << 16)) - 8
        monkeypatch.setattr(host_wire, "MAX_MESSAGE", size)
        send(a, b"12345")
        assert receive(b) == b"12345"
        monkeypatch.setattr(host_wire, "MAX_MESSAGE", size - 1)
        send(a, b"12345")
        with pytest.raises(HostGone, match=f"a message of {size} bytes: the peer is not a session host"):
            receive(b)
    finally:
        a.close()
        b.close()


def test_a_segment_is_the_users_own_made_once_and_attached_only_if_there(tmp_path: Path) -> None:
    segment = Segment(tmp_path / "s", 8192, create=True)
    assert stat.S_IMODE(os.stat(segment.path).st_mode) == 0o600
    assert os.stat(segment.path).st_size == 8192 and segment.size == 8192
    with pytest.raises(FileExistsError):
        Segment(tmp_path / "s", 8192, create=True)
    with pytest.raises(FileNotFoundError):
        Segment.attach(tmp_path / "none", 8192)
    segment.close()


def test_a_tensor_may_end_at_the_segments_last_byte(tmp_path: Path) -> None:
    segment = Segment(tmp_path / "s", 4096, create=True)
    last = TensorPlace("x", 4096 - 16, (4,), np.dtype(np.float32).str)
    segment.array(last)[...] = [1, 2, 3, 4]
    np.testing.assert_array_equal(segment.array(last), [1, 2, 3, 4])
    scalar = TensorPlace("s", 4092, (), np.dtype(np.int32).str)  # a 0-d tensor: one element
    assert segment.array(scalar).shape == ()
    with pytest.raises(ValueError, match="'s' lies past the end"):
        segment.array(TensorPlace("s", 4093, (), np.dtype(np.int32).str))
    first = TensorPlace("f", 0, (4,), np.dtype(np.float32).str)
    segment.array(first)[...] = [5, 6, 7, 8]  # each tensor at its own offset
    np.testing.assert_array_equal(segment.array(last), [1, 2, 3, 4])
    view = segment.array(last)
    segment.close()  # a view still alive: no BufferError (the mapping goes with it)
    del view


def test_a_file_system_without_fallocate_gets_its_size_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unsupported(fd: int, offset: int, size: int) -> None:
        raise OSError(errno.EOPNOTSUPP, "not supported")

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    segment = Segment(tmp_path / "s", 4096, create=True)
    assert os.stat(segment.path).st_size == 4096
    segment.close()

    def full(fd: int, offset: int, size: int) -> None:
        raise OSError(errno.ENOSPC, "no space")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(OSError, match="no space"):
        Segment(tmp_path / "t", 4096, create=True)


def test_a_grown_segment_is_mapped_afresh_and_the_oldest_mapping_goes_past_max_maps(tmp_path: Path) -> None:
    clock = Clock()
    maps = SegmentMaps(clock)
    made = [Segment(tmp_path / f"s{i}", 4096, create=True) for i in range(SegmentMaps.MAX_MAPS + 1)]
    first = maps.get(str(made[0].path), 4096)
    assert maps.get(str(made[0].path), 4096) is first
    for segment in made[1:-1]:
        maps.get(str(segment.path), 4096)
    assert len(maps) == SegmentMaps.MAX_MAPS
    maps.get(str(made[-1].path), 4096)  # one more: the least recently used goes
    assert len(maps) == SegmentMaps.MAX_MAPS and str(made[0].path) not in maps.paths()
    os.truncate(made[1].path, 8192)
    bigger = maps.get(str(made[1].path), 8192)
    assert bigger.size == 8192 and maps.paths()[-1] == str(made[1].path)
    maps.close()
    assert len(maps) == 0
    for segment in made:
        segment.close()


def test_a_new_segment_lets_go_of_removed_ones_within_a_sweep(tmp_path: Path) -> None:
    """A segment not mapped yet may replace one its worker removed: looked at then, however soon."""
    maps = SegmentMaps(Clock())
    maps.prune()  # a look asked for at once: none due yet
    removed, new = (Segment(tmp_path / n, 4096, create=True) for n in ("removed", "new"))
    maps.get(str(removed.path), 4096)
    removed.path.unlink()
    maps.get(str(new.path), 4096)  # the clock has not moved
    assert maps.paths() == [str(new.path)]
    maps.close()
    removed.close()
    new.close()


def test_a_trim_that_fails_is_logged_by_its_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed trim of the pool's thread (an unlink refused) is logged saying what failed."""
    lines: list[str] = []
    told = threading.Condition()

    class Tell(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            with told:
                lines.append(record.getMessage())
                told.notify_all()

    handler = Tell()
    logging.getLogger("server.periodic").addHandler(handler)
    clock = Clock()
    pool = SegmentPool(tmp_path, "seg", clock, trim_every_s=0.001)
    try:
        pool.give_back(pool.take(80 * MIB))
        monkeypatch.setattr(segment_pool, "remove", lambda segment: (_ for _ in ()).throw(OSError("refused")))
        clock.now += RECENT_S + 1.0  # the segment is not needed now: a trim removes it
        with told:
            assert told.wait_for(lambda: bool(lines), timeout=30)
    finally:
        pool.close()
        logging.getLogger("server.periodic").removeHandler(handler)
    assert lines[0] == "shared segments: a trim failed, tried again in 0.0 s: refused"
