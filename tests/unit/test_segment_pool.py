"""server/backends/segment_pool.py: a worker's segments for the session host, reused and trimmed to
the recent batches (one burst of large requests had pinned its memory in /dev/shm for good)."""

from __future__ import annotations

from pathlib import Path

from server.backends.segment_pool import GROW, RECENT, SegmentPool, grown

MIB = 1 << 20


def files(where: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in where.iterdir()}


def test_a_steady_size_reuses_one_segment(tmp_path: Path) -> None:
    pool = SegmentPool(tmp_path, "seg")
    first = pool.take(3 * MIB)
    assert first.size == grown(3 * MIB) == 4 * MIB  # a quarter to spare, whole MiB
    pool.give_back(first)
    for _ in range(3 * RECENT):
        segment = pool.take(3 * MIB)
        assert segment is first
        pool.give_back(segment)
    assert files(tmp_path) == {"seg-0": 4 * MIB}


def test_a_burst_is_let_go_once_the_recent_batches_are_small(tmp_path: Path) -> None:
    pool = SegmentPool(tmp_path, "seg")
    burst = [pool.take(80 * MIB) for _ in range(2)]  # two runs at once
    for segment in burst:
        pool.give_back(segment)
    assert sorted(pool.free_sizes()) == [grown(80 * MIB)] * 2  # kept while they suit the batches
    for i in range(RECENT):
        small = pool.take(1000)
        pool.give_back(small)
        if i < RECENT - 1:  # the burst is still among the recent batches
            assert max(pool.free_sizes()) == grown(80 * MIB)
    assert pool.free_sizes() == []  # the burst's segments (the small batches wore one) are gone
    assert files(tmp_path) == {}
    pool.give_back(pool.take(1000))
    assert pool.free_sizes() == [GROW] and sum(files(tmp_path).values()) == GROW


def test_a_small_batch_takes_the_smallest_free_segment_that_fits(tmp_path: Path) -> None:
    pool = SegmentPool(tmp_path, "seg")
    large, small = pool.take(20 * MIB), pool.take(MIB // 2)
    pool.give_back(large)
    pool.give_back(small)
    assert pool.take(1000) is small
    assert pool.take(10 * MIB) is large


def test_a_segment_too_small_is_replaced_and_close_removes_all(tmp_path: Path) -> None:
    pool = SegmentPool(tmp_path, "seg")
    pool.give_back(pool.take(1000))
    bigger = pool.take(5 * MIB)  # the free one is too small: it goes, a larger one is made
    assert set(files(tmp_path)) == {bigger.path.name}
    held = pool.take(1000)
    pool.give_back(bigger)
    pool.close()
    assert set(files(tmp_path)) == {held.path.name}  # in use: removed when it comes back
    pool.give_back(held)
    assert files(tmp_path) == {}
