"""What a worker and the session host (session_host.py) say to each other, and the shared memory
a batch's inputs cross in.

Messages are pickled and length-prefixed on a Unix socket. Both ends are this server's own
processes, the socket lives in a directory only the server's user can enter (mode 0700, made by
the `--workers` parent), and nothing from a client is unpickled: a client's tensors travel as
bytes in shared memory, described by shapes and dtypes the worker has already checked.

A batch's inputs are written by the worker into a segment of its own (a file in that directory,
mapped by both sides) and read there by the host, with no copy through the socket; outputs, a
model's answer, come back in the reply.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import pickle
import select
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from batcher.types import Array

_LENGTH = struct.Struct("!Q")
MAX_MESSAGE = 1 << 34  # a sanity bound on a length read from the peer (our own process)


class HostGone(ConnectionError):
    """The session host closed the connection (it stopped, or died)."""


def send(sock: socket.socket, message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(_LENGTH.pack(len(data)) + data)


def receive(sock: socket.socket) -> Any:
    (length,) = _LENGTH.unpack(_read_exactly(sock, _LENGTH.size))
    if length > MAX_MESSAGE:
        raise HostGone(f"a message of {length} bytes: the peer is not a session host")
    return pickle.loads(_read_exactly(sock, length))


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    view = memoryview(bytearray(n))
    got = 0
    while got < n:
        count = sock.recv_into(view[got:], n - got)
        if count == 0:
            raise HostGone("the session host closed the connection")
        got += count
    return view.obj  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class TensorPlace:
    """Where one input lies in a segment: its offset, shape and dtype (numpy's string)."""

    name: str
    offset: int
    shape: tuple[int, ...]
    dtype: str


class Segment:
    """A shared file mapped into this process: the worker's side writes a batch there, the host's
    reads it. `create` makes it (the worker), `attach` maps one made by the other side."""

    def __init__(self, path: Path, size: int, *, create: bool) -> None:
        self.path = path
        self.size = size
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                _reserve(fd, size)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)

    @classmethod
    def attach(cls, path: Path, size: int) -> Segment:
        return cls(path, size, create=False)

    def array(self, place: TensorPlace) -> Array:
        """A view of one tensor in the segment (no copy)."""
        dtype = np.dtype(place.dtype)
        count = int(np.prod(place.shape)) if place.shape else 1
        if place.offset + count * dtype.itemsize > self.size:
            raise ValueError(f"input '{place.name}' lies past the end of its segment")
        flat = np.frombuffer(self._map, dtype=dtype, count=count, offset=place.offset)
        return flat.reshape(place.shape)

    def close(self) -> None:
        with contextlib.suppress(BufferError):  # a view still alive: the mapping goes with it
            self._map.close()


def _reserve(fd: int, size: int) -> None:
    """The file's bytes reserved now: a full tmpfs refuses here (OSError), where a sparse file
    would kill the writer with SIGBUS at its first write past the room left."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as err:
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        os.ftruncate(fd, size)  # a file system without fallocate


def read_arrays(segment: Segment, places: list[TensorPlace]) -> dict[str, Array]:
    return {place.name: segment.array(place) for place in places}


class SegmentMaps:
    """A host connection's mapped segments: each mapped once (a grown one replaces it), the last
    MAX_MAPS used kept. A segment whose file its worker removed (trimmed, segment_pool.py) is let
    go at a look (`prune`): at a run at least SWEEP_S after the last look, and while the
    connection idles, every IDLE_S (`PruningReceiver`). The mapping alone held its memory in
    /dev/shm (a reviewer's: a 20 MiB segment the worker had removed stayed mapped through 100
    later batches, where only a new segment's first run had looked; and with no batch after a
    burst, it stayed until the next one)."""

    MAX_MAPS = 16
    SWEEP_S = 1.0  # looks at most this often: each is a stat per mapping
    IDLE_S = 1.0  # an idle connection waits this long for a message before it looks

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._maps: dict[str, Segment] = {}  # in the order last used
        self._clock = clock
        self._looked = clock()

    def get(self, path: str, size: int) -> Segment:
        segment = self._maps.pop(path, None)
        if segment is not None and segment.size != size:
            segment.close()
            segment = None
        self.prune(new=segment is None)
        if segment is None:
            segment = Segment.attach(Path(path), size)
            while len(self._maps) >= self.MAX_MAPS:
                self._maps.pop(next(iter(self._maps))).close()
        self._maps[path] = segment  # last used: at the end
        return segment

    def prune(self, *, new: bool = False) -> None:
        """The mappings of removed files let go, if the last look was SWEEP_S ago or `new` (a
        segment not mapped yet comes: one it replaces may be among them)."""
        now = self._clock()
        if not new and now - self._looked < self.SWEEP_S:
            return
        self._looked = now
        for gone in [p for p in self._maps if not Path(p).exists()]:
            self._maps.pop(gone).close()

    def paths(self) -> list[str]:
        return list(self._maps)

    def __len__(self) -> int:
        return len(self._maps)

    def close(self) -> None:
        maps, self._maps = self._maps, {}
        for segment in maps.values():
            segment.close()


class PruningReceiver:
    """A host connection's messages; while none comes and segments are mapped, `maps` looks every
    IDLE_S (a worker trims while no batch runs too: its removed segments' memory is let go here).
    One poller for the connection's life: a message comes at every batch."""

    def __init__(self, conn: socket.socket, maps: SegmentMaps) -> None:
        self._conn = conn
        self._maps = maps
        self._idle = select.poll()
        self._idle.register(conn, select.POLLIN)

    def receive(self) -> Any:
        while self._maps and not self._idle.poll(max(1, round(self._maps.IDLE_S * 1000))):
            self._maps.prune()
        return receive(self._conn)
