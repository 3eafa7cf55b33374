"""A worker's shared segments for the session host: reused between batches, trimmed to recent ones.

A batch's inputs are written into a segment (a tmpfs file both sides map, host_wire.py). Segments
had only grown and were kept until the model unloaded: one burst of large requests pinned about
1.25 times its largest batch in /dev/shm, mapped in the host too, for each model instance of each
worker (a tester's 12 requests of 16 MiB left 162 MiB, and 100 small requests after it freed
none). A free segment is kept now only while it is at most twice the largest batch of the last
RECENT_S seconds; a larger one is removed when it comes back or at the next trim, and the host
lets its mapping go at its next look (host_wire.SegmentMaps). Seconds, not a count of batches: a
large batch every 40 batches had made a new segment each time (a reviewer's, ~12 ms more for a 19
MiB batch), where one that comes at least every RECENT_S seconds now keeps its segment. A batch
takes the smallest free segment it fits, so a large one is not worn by small batches while a small
one is free.

Trimmed while no batch runs too: with `trim_every_s` (hosted_backend.py gives TRIM_EVERY_S) a
thread of the pool's calls `trim` that often, so a burst with no traffic since gives its segments
back within RECENT_S + TRIM_EVERY_S of its last batch (they had stayed until a batch ran, or the
model unloaded), and the idle host lets their mappings go within a second (host_wire.py).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import threading
import time
from collections.abc import Callable
from pathlib import Path

from server.backends.host_wire import Segment
from server.periodic import Periodic

GROW = 1 << 20  # segments grow in whole MiB, with a quarter to spare
RECENT_S = 10.0  # the batches of these last seconds decide which free segments are worth keeping
SLACK = 2  # a free segment is kept up to this many times what the recent batches need
TRIM_EVERY_S = RECENT_S / 2  # how often an idle pool looks: seldom, a look is a lock and a list


def grown(size: int) -> int:
    """The size a segment is made for a batch of `size` bytes."""
    return max(GROW, -(-(size + size // 4) // GROW) * GROW)


class SegmentPool:
    """The free segments of one model instance; `take`, `give_back` and `trim` from any thread.
    With `trim_every_s`, a thread trims that often (stopped by `close`)."""

    def __init__(
        self,
        directory: Path,
        prefix: str,
        clock: Callable[[], float] = time.monotonic,
        *,
        trim_every_s: float | None = None,
    ) -> None:
        self._directory = directory
        self._prefix = prefix
        self._lock = threading.Lock()
        self._free: list[Segment] = []
        self._recent = RecentMax(RECENT_S, clock)
        self._serial = itertools.count()
        self._closed = False
        self._trimmer: Periodic | None = None
        if trim_every_s is not None:
            self._trimmer = Periodic(self.trim, trim_every_s, "shared segments: a trim")

    def take(self, size: int) -> Segment:
        """A segment of at least `size` bytes: the smallest free one that fits, else a new one."""
        with self._lock:
            self._recent.add(size)
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
                self._free.append(segment)
                gone = self._take_unneeded()
        for old in gone:
            remove(old)

    def trim(self) -> None:
        """Free segments the recent batches no longer need removed (what `give_back` does, for a
        pool that no batch has used since a burst)."""
        with self._lock:
            gone = self._take_unneeded()
        for old in gone:
            remove(old)

    def _take_unneeded(self) -> list[Segment]:
        """(Under the lock.) The free segments over SLACK times the recent batches, out of the pool."""
        limit = SLACK * grown(self._recent.max())
        gone = [s for s in self._free if s.size > limit]
        self._free = [s for s in self._free if s.size <= limit]
        return gone

    def free_sizes(self) -> list[int]:
        with self._lock:
            return [s.size for s in self._free]

    def close(self) -> None:
        """Every free segment removed, the trim thread stopped; those given back later are removed
        then."""
        if self._trimmer is not None:
            self._trimmer.close()  # (one trim at most: a lock and a few unlinks)
        with self._lock:
            self._closed = True
            free, self._free = self._free, []
        for segment in free:
            remove(segment)


class RecentMax:
    """The largest size added in the last `window_s` seconds (O(1) a call, amortized: sizes that a
    later, larger one outlasts are dropped as it comes)."""

    def __init__(self, window_s: float, clock: Callable[[], float]) -> None:
        self._window_s = window_s
        self._clock = clock
        self._sizes: collections.deque[tuple[float, int]] = collections.deque()  # sizes decreasing

    def add(self, size: int) -> None:
        now = self._clock()
        while self._sizes and self._sizes[-1][1] <= size:
            self._sizes.pop()
        self._sizes.append((now, size))
        self._expire(now)

    def max(self) -> int:
        self._expire(self._clock())
        return self._sizes[0][1] if self._sizes else 0

    def _expire(self, now: float) -> None:
        while self._sizes and self._sizes[0][0] < now - self._window_s:
            self._sizes.popleft()


def remove(segment: Segment) -> None:
    segment.close()
    with contextlib.suppress(FileNotFoundError):
        segment.path.unlink()
