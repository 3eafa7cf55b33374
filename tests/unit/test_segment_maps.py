"""The session host lets go of segments their worker removed (host_wire.SegmentMaps, with the
worker's trim, segment_pool.py): a trimmed segment stayed mapped by the host, its memory held in
/dev/shm, as long as the connection that mapped it saw no new segment (a reviewer's test)."""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from server.backends import segment_pool
from server.backends.host_wire import PruningReceiver, Segment, SegmentMaps, send
from server.backends.hosted_backend import HostedBackend
from server.backends.session_host import SessionHost, stop_listening
from tests.support.server_process import wait_until
from tests.unit.test_session_host import _host_request


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.on_read: Callable[[], None] | None = None  # run once, at the next read

    def __call__(self) -> float:
        on_read, self.on_read = self.on_read, None
        if on_read is not None:
            on_read()
        return self.now


def test_a_removed_segment_is_let_go_at_the_next_look(tmp_path: Path) -> None:
    clock = Clock()
    maps = SegmentMaps(clock)
    kept, removed = (
        Segment(tmp_path / "kept", 4096, create=True),
        Segment(tmp_path / "removed", 4096, create=True),
    )
    maps.get(str(removed.path), 4096)
    maps.get(str(kept.path), 4096)
    removed.path.unlink()
    maps.get(str(kept.path), 4096)  # a look within SWEEP_S of the last: not yet
    assert maps.paths() == [str(removed.path), str(kept.path)]
    clock.now += SegmentMaps.SWEEP_S
    maps.get(str(kept.path), 4096)
    assert maps.paths() == [str(kept.path)]
    maps.close()
    assert maps.paths() == []
    kept.close()
    removed.close()


def test_an_idle_connection_lets_go_of_removed_segments_at_most_once_a_sweep(tmp_path: Path) -> None:
    """No run comes after the worker removed a segment (its idle trim, segment_pool.py): the host,
    waiting for the next message, looks every IDLE_S, each look at least SWEEP_S after the last."""
    clock = Clock()
    maps = SegmentMaps(clock)
    maps.IDLE_S = 0.001  # (real seconds: how long a wait for a message lasts before a look)
    kept, removed = (Segment(tmp_path / n, 4096, create=True) for n in ("kept", "removed"))
    maps.get(str(removed.path), 4096)
    maps.get(str(kept.path), 4096)
    removed.path.unlink()
    host_end, worker_end = socket.socketpair()
    host_end.settimeout(30.0)  # (a look that never comes fails the test, not hangs it)
    messages = PruningReceiver(host_end, maps)
    try:
        # The message comes during the first idle look (the look reads the clock): within SWEEP_S.
        clock.on_read = lambda: send(worker_end, ("counts", b"k"))
        assert messages.receive() == ("counts", b"k")
        assert maps.paths() == [str(removed.path), str(kept.path)]  # not yet: looked too lately
        clock.now += SegmentMaps.SWEEP_S
        clock.on_read = lambda: send(worker_end, ("counts", b"k"))
        assert messages.receive() == ("counts", b"k")
        assert maps.paths() == [str(kept.path)]  # let go with no run since
    finally:
        host_end.close()
        worker_end.close()
        maps.close()
        kept.close()
        removed.close()


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    where = Path(tempfile.mkdtemp(prefix="sluiceway-test-maps-", dir="/dev/shm"))
    yield where
    shutil.rmtree(where, ignore_errors=True)


def deleted_mappings(where: Path) -> list[str]:
    with open("/proc/self/maps") as maps:
        return [
            line.split()[-2] for line in maps if str(where) in line and line.rstrip().endswith("(deleted)")
        ]


def test_a_trimmed_segment_is_let_go_by_the_host_on_every_connection(
    shm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two large batches in the host at once (two connections), then small ones: the worker trims
    the large segments and the host, whichever connection mapped them, lets them go."""
    monkeypatch.setattr(segment_pool, "RECENT_S", 0.0)  # only the batch now counts as recent
    monkeypatch.setattr(SegmentMaps, "SWEEP_S", 0.0)  # every run looks
    monkeypatch.setattr(SegmentMaps, "IDLE_S", 600.0)  # runs look, not idle connections
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(shm_dir / "host.sock"))
    listener.listen()
    host = SessionHost()
    threading.Thread(target=host.serve, args=(listener,), daemon=True).start()
    both, answer, burst = threading.Barrier(2, timeout=60), host._answer, [True]

    def paired(message: tuple[Any, ...], maps: SegmentMaps, conn: socket.socket | None = None) -> Any:
        if message[0] == "run" and burst[0]:
            both.wait()  # both large runs in the host at once: two connections
        return answer(message, maps, conn)

    host._answer = paired  # type: ignore[method-assign]
    executor = ThreadPoolExecutor(2)
    backend = HostedBackend(shm_dir / "host.sock", _host_request(shm_dir), executor)
    try:
        large, small = {"x": np.ones((1, 4 << 20), np.float32)}, {"x": np.ones((1, 16), np.float32)}
        for run in [executor.submit(backend.run_blocking, large) for _ in range(2)]:
            run.result(60)
        assert len(deleted_mappings(shm_dir)) == 2  # trimmed by the worker, still mapped by the host
        burst[0] = False
        for _ in range(4):  # each connection runs again (the longest idle is taken first)
            backend.run_blocking(small)
        assert sum(p.stat().st_size for p in shm_dir.glob("seg-*")) == segment_pool.GROW  # trimmed
        assert deleted_mappings(shm_dir) == []  # and let go by the host
    finally:
        backend.close()
        executor.shutdown()
        stop_listening(listener)  # its serve thread ends with the test


def test_a_trimmed_segment_is_let_go_by_an_idle_host(shm_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A large batch, then no traffic: the worker's segment is removed (here as it comes back) and
    the host, which no run reaches after it, lets its mapping go while it waits."""
    monkeypatch.setattr(segment_pool, "RECENT_S", 0.0)  # only the batch now counts as recent
    monkeypatch.setattr(SegmentMaps, "IDLE_S", 0.05)
    monkeypatch.setattr(SegmentMaps, "SWEEP_S", 0.1)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(shm_dir / "host.sock"))
    listener.listen()
    threading.Thread(target=SessionHost().serve, args=(listener,), daemon=True).start()
    executor = ThreadPoolExecutor(1)
    backend = HostedBackend(shm_dir / "host.sock", _host_request(shm_dir), executor)
    try:
        backend.run_blocking({"x": np.ones((1, 4 << 20), np.float32)})
        assert list(shm_dir.glob("seg-*")) == []  # removed by the worker
        # The host thread's state, read as another process's would be (it is one when served).
        wait_until(lambda: deleted_mappings(shm_dir) == [], "the idle host to unmap the segment", 30.0)
    finally:
        backend.close()
        executor.shutdown()
        stop_listening(listener)  # its serve thread ends with the test
