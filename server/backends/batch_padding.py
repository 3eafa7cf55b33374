"""Batches padded to a steady number of rows on a CUDA instance, so its convolutions keep their plans.

onnxruntime's CUDA Conv (1.19 and later, cuDNN's frontend) builds its execution plan again whenever
its input shape differs from its previous run's: one plan per kernel, no cache by shape (conv.cc,
UpdateState -> CreateCudnnFeExecutionPlan). A dynamic batcher changes the batch size from one batch
to the next, so every batch paid that build: on an H200 (BENCHMARKS.md section 16) served resnet at
16 in flight did 32 rows/s in batches of 8 where raw runs at a steady 8 did 5,539, and py-spy had
the instance's thread inside the run 94% of the time (through IO binding and session.run alike).

So a CUDA instance pads each batch, repeating its last row, up to a size that changes only when
the load does: the powers of two up to max_batch_size (and max_batch_size). A batch larger than the
current size makes it the smallest that holds the batch; the size goes down to the smallest that
holds a batch once `shrink_after` batches in a row were a quarter of it or less (model parameter
`gpu_batch_padding_shrink_after`, default 8). Under a steady load the shape stops changing; a
change of load costs one build. With shrink_after 1 (the first default), in one run: resnet at 16
in flight 755 rows/s, p50 20 ms; in one server, resnet_u8 at 64 in flight 992 rows/s padded against
226 not; but resnet_u8 at 64 in flight in the check 367 rows/s, p50 237 ms. The batcher alternates
a lone request (taken by the idle instance as a batch finishes) with the rest (BENCHMARKS.md
section 12: sizes 1 and 7 in turn), and with shrink_after 1 that changed the shape at every batch;
with 8 the size holds unless 8 small batches come in a row, a real drop in load (on an H200,
resnet_u8 at 16 in flight in one server: 90 changes in 4 s and 140 rows/s with 1, 2 and 1,417 rows/s
with 8; BENCHMARKS.md section 16b). Each change is counted (`changes`: the metric
sluiceway_padded_shape_changes_total).

Only where rows are rows: the graph declares every input's and every non-scalar output's first
dimension as one symbol (the batch; an output whose first dimension is unknown, or another symbol,
may be computed across rows, and padding rows would enter it), and by default (`auto`) only for
models that hold a convolution (read without the weights: int_division_scan.may_hold); the model
parameter `gpu_batch_padding` is `auto`, `true` (any such model) or `false`. The outputs are cut
back to the batch's rows before they are scattered; repeating a real row keeps the padding away
from inputs no request sent (a zero divisor). A staged batch is padded in its pinned copy, where its
requests are gathered (pinned.py), so padding adds no copy; `pad` serves the others. Another
batch size runs other kernels, so results may differ in their last bits, as between any two batch
sizes. TensorRT instances are not padded
(their engines hold a profile of batch sizes), nor CPU ones, nor batches run through session.run.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from batcher.scatter import Gathered
from batcher.types import Array
from server.backends.int_division_scan import may_hold

if TYPE_CHECKING:  # io_binding.py makes these runners; the config imports Padding without onnxruntime
    import onnxruntime as ort

    from server.backends.io_binding import Runner
    from server.models.onnx_completion import OnnxTensor

SHRINK = 4  # the size goes down once a batch is at most a quarter of it
SHRINK_AFTER = 8  # ...after this many such batches in a row (gpu_batch_padding_shrink_after's default)


def bucket(rows: int, max_rows: int) -> int:
    """The smallest power of two at least `rows`, at most `max_rows` (max_rows itself if none)."""
    size = 1
    while size < rows:
        size *= 2
    return min(size, max_rows)


CONVOLUTION = (b"Conv",)  # Conv, ConvTranspose, and the fused and quantized ones: cuDNN's plans


class ShapeChanges:
    """How often a version's instances changed their padded size, all together: one per version
    (its Padding), so an instance the watchdog replaces adds to the same count (summed over the
    instances serving, a replaced one's changes were lost and the counter went down)."""

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    def add(self) -> None:
        with self._lock:
            self._count += 1

    @property
    def count(self) -> int:
        return self._count

    def __reduce__(self) -> tuple[type[ShapeChanges], tuple[()]]:
        """Pickled (for the session host, session_host.py) as a new count: the host counts its own."""
        return (ShapeChanges, ())


@dataclass(frozen=True)
class Padding:
    """A model's padding: its largest batch, small batches in a row before the size shrinks, and
    whether only a model with a convolution is padded (`auto`); `changes` its instances' count."""

    max_rows: int
    shrink_after: int = SHRINK_AFTER
    convolutions_only: bool = True
    changes: ShapeChanges = field(default_factory=ShapeChanges, compare=False, repr=False)


def padding_for(padding: Padding | None, path: Path) -> Padding | None:
    """`padding`, unless it is for convolution models only and the model file holds none."""
    if padding is None or (padding.convolutions_only and not may_hold(path, CONVOLUTION)):
        return None
    return padding


def batch_major(inputs: Sequence[OnnxTensor], outputs: Sequence[OnnxTensor]) -> bool:
    """Whether the graph declares one symbol as the first dimension of every input and of every
    output that has a dimension (0-d outputs, the division guard's counts, are kept whole)."""
    firsts = {t.shape[0] if t.shape else None for t in inputs}
    if len(firsts) != 1:
        return False
    (batch,) = firsts
    return isinstance(batch, str) and all(not t.shape or t.shape[0] == batch for t in outputs)


class StickySize:
    """The padded size batches run at: grown at once to hold a batch, shrunk after `shrink_after`
    batches in a row filled 1/SHRINK of it or less."""

    def __init__(
        self, max_rows: int, shrink_after: int = SHRINK_AFTER, counted: ShapeChanges | None = None
    ) -> None:
        self.max_rows = max_rows
        self.shrink_after = max(shrink_after, 1)
        # A batch is small at 1/shrink of the size or less. The session host, which cuts its merged
        # runs at the size itself (session_host.py), sets 2: its runs alternate at about half.
        self.shrink = SHRINK
        self.current = 0
        # How often the shape changed (each one a plan build on the device): the version's count.
        self.counted = counted if counted is not None else ShapeChanges()
        self._small = 0  # batches in a row at a quarter of the size or less
        self._lock = threading.Lock()  # an instance may run two batches at once

    def size_for(self, rows: int) -> int:
        if rows > self.max_rows:  # not batched by the server (a request of its own): left as sent
            return rows
        with self._lock:
            small = rows * self.shrink <= self.current
            self._small = self._small + 1 if small else 0
            if rows > self.current or (small and self._small >= self.shrink_after):
                self.current = bucket(rows, self.max_rows)
                self.counted.add()
                self._small = 0
            return self.current

    @property
    def changes(self) -> int:
        return self.counted.count


def batch_rows(feed: Mapping[str, Array]) -> int | None:
    """The rows of a batch: every input's first dimension, or None where they differ or none has one
    (a batch not yet gathered says it without gathering)."""
    if isinstance(feed, Gathered):
        return feed.rows
    firsts = {array.shape[0] if array.ndim else None for array in feed.values()}
    return firsts.pop() if len(firsts) == 1 else None


def pad(feed: Mapping[str, Array], rows: int, size: int) -> dict[str, Array]:
    """Each input grown from `rows` to `size` rows by repeating its last row, in one new array (a
    repeat then a concatenation took 8.5 ms for 33 resnet rows to 64 here, this 5.6 ms, a plain
    copy of the 33 rows 1.4 ms). A staged batch is padded in its pinned copy instead (pinned.py)."""
    padded: dict[str, Array] = {}
    for name, array in feed.items():
        grown = np.empty((size, *array.shape[1:]), dtype=array.dtype)
        grown[:rows] = array
        grown[rows:] = array[rows - 1]
        padded[name] = grown
    return padded


class PaddedRunner:
    """A runner whose batches go to `inner` padded to the sticky size, their outputs cut back."""

    def __init__(self, inner: Runner, padding: Padding) -> None:
        self._inner = inner
        # A runner that copies each batch anyway pads it in that copy (BoundRunner: the pinned one).
        self._run_padded = getattr(inner, "run_padded", None)
        self.size = StickySize(padding.max_rows, padding.shrink_after, padding.changes)

    def run(self, feed: Mapping[str, Array], run_options: ort.RunOptions) -> list[Array]:
        rows = batch_rows(feed)
        if not rows:  # nothing to pad by (no rows, or inputs that disagree: the run says so)
            return self._inner.run(feed, run_options)
        size = self.size.size_for(rows)
        if size == rows:
            return self._inner.run(feed, run_options)
        if self._run_padded is not None:
            outputs = self._run_padded(feed, run_options, size)
        else:
            outputs = self._inner.run(pad(feed, rows, size), run_options)
        return [out[:rows] if out.ndim > 0 and out.shape[0] == size else out for out in outputs]


def sticky_size(instance: object) -> StickySize | None:
    """The size `instance` pads its batches to, or None when it does not pad. Reads through a
    fault-injecting wrapper (`inner`)."""
    while hasattr(instance, "inner"):
        instance = instance.inner
    runner = getattr(getattr(instance, "io", None), "runner", None)
    return runner.size if isinstance(runner, PaddedRunner) else None


def shape_changes(instance: object) -> ShapeChanges | None:
    """The count of padded size changes `instance` adds to (its version's: each change a plan build
    per convolution on the GPU), or None when it does not pad."""
    size = sticky_size(instance)
    return size.counted if size is not None else None
