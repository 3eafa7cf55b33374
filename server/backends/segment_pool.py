"""A worker's shared segments for the session host: reused between batches, trimmed to recent ones.

A batch's inputs are written into a segment (a tmpfs file both sides map, host_wire.py). Segments
had only grown and were kept until the model unloaded: one burst of large requests pinned about
1.25 times its largest batch in /dev/shm, mapped in the host too, for each model instance of each
worker (a tester's 12 requests of 16 MiB left 162 MiB, and 100 small requests after it freed
none). A free segment is kept now only while it is at most twice the size the last RECENT batches
needed; a larger one is removed when it comes back or is found free, and the host lets its mapping
go once the file is gone (session_host._mapped). A batch takes the smallest free segment it fits,
so a large one is not worn by small batches while a small one is free.

Not trimmed while no batch runs: after a burst and no traffic since, its segments stay until the
next RECENT batches or the model's unload (as a process without shared sessions keeps the memory
its allocator took).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import threading
from pathlib import Path

from server.backends.host_wire import Segment

GROW = 1 << 20  # segments grow in whole MiB, with a quarter to spare
RECENT = 32  # batches whose sizes decide which free segments are worth keeping
SLACK = 2  # a free segment is kept up to this many times what the recent batches need


def grown(size: int) -> int:
    """The size a segment is made for a batch of `size` bytes."""
    return max(GROW, -(-(size + size // 4) // GROW) * GROW)


class SegmentPool:
    """The free segments of one model instance; `take` and `give_back` from any thread."""

    def __init__(self, directory: Path, prefix: str) -> None:
        self._directory = directory
        self._prefix = prefix
        self._lock = threading.Lock()
        self._free: list[Segment] = []
        self._recent: collections.deque[int] = collections.deque(maxlen=RECENT)
        self._serial = itertools.count()
        self._closed = False

    def take(self, size: int) -> Segment:
        """A segment of at least `size` bytes: the smallest free one that fits, else a new one."""
        with self._lock:
            self._recent.append(size)
            fits = [s for s in self._free if s.size >= size]
            if fits:
                best = min(fits, key=lambda s: s.size)
                self._free.remove(best)
                return best
            # None fits: one too small goes (the pool stays as many as the runs at once).
            old = self._free.pop() if self._free else None
        if old is not None:
            remove(old)
        path = self._directory / f"{self._prefix}-{next(self._serial)}"
        return Segment(path, grown(size), create=True)

    def give_back(self, segment: Segment) -> None:
        """A batch is done with `segment`: kept if it suits the recent batches, else removed, with
        any free segment that no longer does."""
        with self._lock:
            if self._closed:
                gone = [segment]
            else:
                limit = SLACK * grown(max(self._recent, default=0))
                gone = [s for s in (*self._free, segment) if s.size > limit]
                self._free = [s for s in (*self._free, segment) if s.size <= limit]
        for old in gone:
            remove(old)

    def free_sizes(self) -> list[int]:
        with self._lock:
            return [s.size for s in self._free]

    def close(self) -> None:
        """Every free segment removed; those given back later are removed then."""
        with self._lock:
            self._closed = True
            free, self._free = self._free, []
        for segment in free:
            remove(segment)


def remove(segment: Segment) -> None:
    segment.close()
    with contextlib.suppress(FileNotFoundError):
        segment.path.unlink()
