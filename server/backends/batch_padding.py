"""Batches padded to a steady number of rows on a CUDA instance, so its convolutions keep their plans.

onnxruntime's CUDA Conv (1.19 and later, cuDNN's frontend) builds its execution plan again whenever
its input shape differs from its previous run's: one plan per kernel, no cache by shape (conv.cc,
UpdateState -> CreateCudnnFeExecutionPlan). A dynamic batcher changes the batch size from one batch
to the next, so every batch paid that build: on an H200 (BENCHMARKS.md section 16) served resnet_u8
at 16 in flight ran 114 rows/s in batches of 8, the instance's thread inside the run 94% of the
time, where the same session did 7,824 rows/s at a steady batch of 8. Warming every batch size at
load changed nothing (the plan kept is the last one), nor did running the batches plain.

So a CUDA instance pads each batch, repeating its last row, up to a size that changes only when
the load does: the powers of two up to max_batch_size (and max_batch_size). A batch larger than the
current size makes it the smallest that holds the batch; the size goes down to the smallest that
holds a batch once `shrink_after` batches in a row were a quarter of it or less (model parameter
`gpu_batch_padding_shrink_after`, default 1). Under a steady load the shape stops changing; a
change of load costs one build. Measured with the default (BENCHMARKS.md section 16): resnet at 16
in flight went from 67 to 755 rows/s; resnet_u8 at 64 in flight, whose batches ranged around 29
rows, stayed at 367 rows/s, p50 237 ms: sizes that cross 16 and 32 back and forth still change
the shape often, which a larger `shrink_after` is for (not yet measured on a GPU).

The outputs are cut back to the batch's rows before they are scattered. Rows of a batch are
independent (max_batch_size > 0), so the padding rows change no answer; repeating a real row
keeps them away from inputs no request sent (a zero divisor). Model parameter
`gpu_batch_padding: "false"` turns it off; TensorRT instances are not padded (their engines hold a
profile of batch sizes).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from batcher.types import Array

if TYPE_CHECKING:  # io_binding.py makes these runners; the config imports Padding without onnxruntime
    import onnxruntime as ort

    from server.backends.io_binding import Runner

SHRINK = 4  # the size goes down once a batch is at most a quarter of it


def bucket(rows: int, max_rows: int) -> int:
    """The smallest power of two at least `rows`, at most `max_rows` (max_rows itself if none)."""
    size = 1
    while size < rows:
        size *= 2
    return min(size, max_rows)


@dataclass(frozen=True)
class Padding:
    """A model's padding: its largest batch, and small batches in a row before the size shrinks."""

    max_rows: int
    shrink_after: int = 1


class StickySize:
    """The padded size batches run at: grown at once to hold a batch, shrunk after `shrink_after`
    batches in a row filled 1/SHRINK of it or less."""

    def __init__(self, max_rows: int, shrink_after: int = 1) -> None:
        self.max_rows = max_rows
        self.shrink_after = max(shrink_after, 1)
        self.current = 0
        self.changes = 0  # how often the shape changed (each one a plan build on the device)
        self._small = 0  # batches in a row at a quarter of the size or less
        self._lock = threading.Lock()  # an instance may run two batches at once

    def size_for(self, rows: int) -> int:
        if rows > self.max_rows:  # not batched by the server (a request of its own): left as sent
            return rows
        with self._lock:
            small = rows * SHRINK <= self.current
            self._small = self._small + 1 if small else 0
            if rows > self.current or (small and self._small >= self.shrink_after):
                self.current = bucket(rows, self.max_rows)
                self.changes += 1
                self._small = 0
            return self.current


def batch_rows(feed: Mapping[str, Array]) -> int | None:
    """The rows of a batch: every input's first dimension, or None where they differ or none has one."""
    firsts = {array.shape[0] for array in feed.values() if array.ndim > 0}
    return firsts.pop() if len(firsts) == 1 and all(a.ndim > 0 for a in feed.values()) else None


def pad(feed: Mapping[str, Array], rows: int, size: int) -> dict[str, Array]:
    """Each input grown from `rows` to `size` rows by repeating its last row."""
    return {
        name: np.concatenate([array, np.repeat(array[rows - 1 : rows], size - rows, axis=0)])
        for name, array in feed.items()
    }


class PaddedRunner:
    """A runner whose batches go to `inner` padded to the sticky size, their outputs cut back."""

    def __init__(self, inner: Runner, padding: Padding) -> None:
        self._inner = inner
        self.size = StickySize(padding.max_rows, padding.shrink_after)

    def run(self, feed: Mapping[str, Array], run_options: ort.RunOptions) -> list[Array]:
        rows = batch_rows(feed)
        if not rows:  # nothing to pad by (no rows, or inputs that disagree: the run says so)
            return self._inner.run(feed, run_options)
        size = self.size.size_for(rows)
        if size == rows:
            return self._inner.run(feed, run_options)
        outputs = self._inner.run(pad(feed, rows, size), run_options)
        return [out[:rows] if out.ndim > 0 and out.shape[0] == size else out for out in outputs]
