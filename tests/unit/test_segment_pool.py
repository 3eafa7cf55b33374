"""server/backends/segment_pool.py: a worker's segments for the session host, reused and trimmed to
the recent batches (one burst of large requests had pinned its memory in /dev/shm for good)."""

from __future__ import annotations

import threading
from pathlib import Path

from server.backends.segment_pool import GROW, RECENT_S, RecentMax, SegmentPool, grown

MIB = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def files(where: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in where.iterdir()}


def test_a_steady_size_reuses_one_segment(tmp_path: Path) -> None:
    clock = Clock()
    pool = SegmentPool(tmp_path, "seg", clock)
    first = pool.take(3 * MIB)
    assert first.size == grown(3 * MIB) == 4 * MIB  # a quarter to spare, whole MiB
    pool.give_back(first)
    for _ in range(100):
        clock.now += 1.0
        segment = pool.take(3 * MIB)
        assert segment is first
        pool.give_back(segment)
    assert files(tmp_path) == {"seg-0": 4 * MIB}


def test_a_burst_is_let_go_once_the_recent_batches_are_small(tmp_path: Path) -> None:
    clock = Clock()
    pool = SegmentPool(tmp_path, "seg", clock)
    burst = [pool.take(80 * MIB) for _ in range(2)]  # two runs at once
    for segment in burst:
        pool.give_back(segment)
    assert sorted(pool.free_sizes()) == [grown(80 * MIB)] * 2  # kept while they suit the batches
    for _ in range(int(RECENT_S)):  # small batches while the burst is among the recent ones
        clock.now += 0.99
        pool.give_back(pool.take(1000))
        assert max(pool.free_sizes()) == grown(80 * MIB)
    clock.now += 1.0  # the burst is older than RECENT_S now
    pool.give_back(pool.take(1000))
    assert pool.free_sizes() == []  # the burst's segments (a small batch wore one) are gone
    assert files(tmp_path) == {}
    pool.give_back(pool.take(1000))
    assert pool.free_sizes() == [GROW] and sum(files(tmp_path).values()) == GROW


def test_a_large_batch_now_and_then_keeps_its_segment(tmp_path: Path) -> None:
    """A large batch every 40 batches had made a new segment each time (a reviewer's count: 501 in
    10,000 batches); one that comes within RECENT_S of the last keeps it."""
    clock = Clock()
    pool = SegmentPool(tmp_path, "seg", clock)
    made = set()
    for i in range(400):
        clock.now += 0.1  # 40 batches: 4 s
        segment = pool.take(20 * MIB if i % 40 == 0 else 100_000)
        made.add(segment.path.name)
        pool.give_back(segment)
    assert len(made) <= 2, sorted(made)


def test_a_small_batch_takes_the_smallest_free_segment_that_fits(tmp_path: Path) -> None:
    pool = SegmentPool(tmp_path, "seg", Clock())
    large, small = pool.take(20 * MIB), pool.take(MIB // 2)
    pool.give_back(large)
    pool.give_back(small)
    assert pool.take(1000) is small
    assert pool.take(10 * MIB) is large


def test_a_segment_too_small_is_replaced_and_close_removes_all(tmp_path: Path) -> None:
    pool = SegmentPool(tmp_path, "seg", Clock())
    pool.give_back(pool.take(1000))
    bigger = pool.take(5 * MIB)  # the free one is too small: it goes, a larger one is made
    assert set(files(tmp_path)) == {bigger.path.name}
    held = pool.take(1000)
    pool.give_back(bigger)
    pool.close()
    assert set(files(tmp_path)) == {held.path.name}  # in use: removed when it comes back
    pool.give_back(held)
    assert files(tmp_path) == {}


def test_the_recent_maximum_is_of_the_window_only() -> None:
    clock = Clock()
    recent = RecentMax(10.0, clock)
    assert recent.max() == 0
    for size in (5, 9, 3, 7):
        recent.add(size)
        clock.now += 3.0  # added at 0, 3, 6, 9 s
    assert recent.max() == 9  # at 12 s: 9 (3 s) is within the window
    clock.now += 1.1  # 13.1 s: 9 (3 s) is past it; 3 (6 s) was outlasted by 7 (9 s)
    assert recent.max() == 7
    clock.now += 10.0
    assert recent.max() == 0


def test_an_idle_pool_trims_a_burst_with_no_batch_after_it(tmp_path: Path) -> None:
    """A burst and no traffic since: its segments had stayed until a batch ran (or the model
    unloaded); `trim`, which the pool's thread calls while no batch runs, removes them."""
    clock = Clock()
    pool = SegmentPool(tmp_path, "seg", clock)
    small = pool.take(1000)
    burst = [pool.take(80 * MIB) for _ in range(2)]
    for segment in (small, *burst):
        pool.give_back(segment)
    clock.now += RECENT_S  # the burst is just within the window: kept
    pool.trim()
    assert sorted(pool.free_sizes()) == [GROW, grown(80 * MIB), grown(80 * MIB)]
    clock.now += 0.5  # past it: no batch since, and the burst goes all the same
    pool.trim()
    assert pool.free_sizes() == [GROW] and files(tmp_path) == {small.path.name: GROW}  # a small one stays
    pool.close()
    assert files(tmp_path) == {}


class CountingClock(Clock):
    """A fake clock that tells a waiter how many times it was read (the pool reads it once a trim)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.read = threading.Condition()

    def __call__(self) -> float:
        with self.read:
            self.reads += 1
            self.read.notify_all()
            return self.now

    def advance(self, seconds: float) -> None:
        with self.read:
            self.now += seconds
            self.reads = 0

    def wait_reads(self, count: int) -> None:
        with self.read:
            assert self.read.wait_for(lambda: self.reads >= count, timeout=30.0), "no trim came"


def test_the_pools_thread_trims_while_no_batch_runs_until_close(tmp_path: Path) -> None:
    clock = CountingClock()
    pool = SegmentPool(tmp_path, "seg", clock, trim_every_s=0.001)
    pool.give_back(pool.take(80 * MIB))
    assert pool.free_sizes() == [grown(80 * MIB)]  # a trim now keeps it: the burst is recent
    clock.advance(RECENT_S + 1.0)
    clock.wait_reads(2)  # a trim began after the first one at this time had ended
    assert pool.free_sizes() == [] and files(tmp_path) == {}
    pool.close()
    assert pool._trimmer is not None and not pool._trimmer.is_alive()
