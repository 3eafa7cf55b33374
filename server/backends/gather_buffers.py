"""Reused host buffers a CPU instance gathers its largest batches into, for session.run.

glibc hands out an allocation over 32 MiB (its largest mmap threshold) as fresh pages and gives
them back to the kernel when it is freed, so a batch of that size gathered into a new array faults
every page in again: 64 rows of resnet's 602 KB cost 171-280 us of CPU a row that way and 50-63
into a reused buffer (BENCHMARKS.md section 41), and a session host merging its workers' batches
into runs of 62 rows spent most of its CPU there. A batch of at least GATHER_MIN_BYTES is gathered
into one of the instance's buffers (pinned.py's staging, over plain memory here); a smaller one
into a new array as before, where malloc reuses its heap. The buffers are held while the instance
lives, each as large as the largest batch it has held.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from batcher.scatter import Gathered
from batcher.types import Array
from server.backends.pinned import ALIGN, PinnedStaging, aligned
from server.backends.strings import as_dict

GATHER_MIN_BYTES = 32 << 20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: larger blocks come fresh
_NUMERIC = frozenset("biufc")  # dtype kinds copied as bytes (not BYTES' objects, not BF16's void)


class PlainMemory:
    """host_alloc / free_host over numpy's memory (PinnedStaging's buffers, without CUDA)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[int, Array] = {}  # each buffer's address -> the array that owns it

    def host_alloc(self, nbytes: int) -> int:
        block = np.empty(nbytes + ALIGN, np.uint8)  # MemoryError: that batch goes unstaged
        pointer = aligned(block.ctypes.data)
        with self._lock:
            self._held[pointer] = block
        return pointer

    def free_host(self, pointer: int) -> None:
        with self._lock:
            del self._held[pointer]

    @property
    def held_bytes(self) -> int:
        with self._lock:
            return sum(block.nbytes for block in self._held.values())


def gather_staging(max_runs: int) -> PinnedStaging:
    """The buffers of one CPU instance: one a run in flight at most (busy: the batch goes unstaged)."""
    return PinnedStaging(PlainMemory(), max_runs)


def worth_staging(feed: Mapping[str, Array], min_bytes: int = GATHER_MIN_BYTES) -> bool:
    """A batch not yet gathered (its requests' parts), numeric throughout, of `min_bytes` or more."""
    if not isinstance(feed, Gathered):
        return False
    nbytes = 0
    for name in feed:
        shape, dtype = feed.spec(name)
        if dtype.kind not in _NUMERIC:
            return False
        nbytes += int(np.prod(shape)) * dtype.itemsize
    return nbytes >= min_bytes


def run_gathered(
    staging: PinnedStaging | None,
    feed: Mapping[str, Array],
    run: Callable[[dict[str, Array]], Sequence[Any]],  # session.run's outputs: arrays, lists, maps
    min_bytes: int = GATHER_MIN_BYTES,
) -> list[Any]:
    """`run` of `feed` as session.run takes it: a large gathered batch from one of `staging`'s
    buffers, any other as `as_dict` gives it. An output that views the staged inputs is copied
    before the buffer goes back: onnxruntime 1.31 copies a graph input it returns (Reshape and
    Identity alike, checked), but that is its choice, not a promise."""
    if staging is None or not worth_staging(feed, min_bytes):
        return list(run(as_dict(feed)))
    with staging.stage_arrays(feed) as staged:
        if staged is None:  # too large for a buffer, or every buffer busy
            return list(run(as_dict(feed)))
        results = list(run(staged))
        return [_detached(result, staged.values()) for result in results]


def _detached(result: Any, staged: Iterable[Array]) -> Any:
    if isinstance(result, np.ndarray) and any(np.may_share_memory(result, view) for view in staged):
        return result.copy()
    return result
