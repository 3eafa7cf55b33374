"""Pinned host buffers a CUDA instance stages each batch's inputs in, before onnxruntime copies them.

A copy to the device from pageable memory goes through the driver's own staging buffer in chunks;
from page-locked memory it is one DMA. Each batch takes one buffer, holding all of its inputs back
to back (256-byte aligned), and gives it back when its run has ended, so the buffers number at
most the runs an instance has in flight; each grows to the largest batch it has held. A batch
that would need more than `max_bytes`, or that finds every buffer busy, is not staged: its inputs
are bound from where the batcher gathered them, and onnxruntime copies them from there.
The same buffers over plain memory hold a CPU instance's largest batches (gather_buffers.py).
"""

from __future__ import annotations

import ctypes
import logging
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from batcher.scatter import Gathered
from batcher.types import Array
from server.backends.cudart import CudaError

ALIGN = 256  # what cudaMalloc aligns to; kernels may assume it of their inputs
_GROW = 1 << 20  # buffers grow in whole MiB, so a slightly larger batch does not reallocate
MAX_BYTES = 1 << 30  # one staged batch at most; larger ones are bound unstaged

log = logging.getLogger(__name__)


def aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


Spec = tuple[tuple[int, ...], "np.dtype[np.generic]"]


def spec_of(arrays: Mapping[str, Array], name: str) -> Spec:
    """An input's shape and dtype; a batch not yet gathered (batcher Gathered) says them as it is."""
    if isinstance(arrays, Gathered):
        return arrays.spec(name)
    array = arrays[name]
    return array.shape, array.dtype


def staged_shape(shape: tuple[int, ...], pad_to: int | None) -> tuple[int, ...]:
    """The shape an input is staged in: grown to `pad_to` rows where that is given."""
    return shape if pad_to is None else (pad_to, *shape[1:])


def fill(target: Array, arrays: Mapping[str, Array], name: str, shape: tuple[int, ...] | None = None) -> None:
    """Input `name` of `arrays` (of `shape`, spec_of's when not given) copied into `target` (any
    layout in, C order out): a batch not yet gathered is gathered there, its one copy. Where
    `target` has more rows, they repeat the input's last row (a padded batch, batch_padding.py)."""
    shape = spec_of(arrays, name)[0] if shape is None else shape
    rows = shape[0] if shape else 0
    head = target[:rows] if target.shape != shape else target
    if isinstance(arrays, Gathered):
        arrays.into(name, head)
    else:
        np.copyto(head, arrays[name])
    if head is not target and rows:
        target[rows:] = target[rows - 1]


def layout(
    arrays: Mapping[str, Array], pad_to: int | None = None, names: Sequence[str] | None = None
) -> tuple[dict[str, int], int]:
    """Each input's offset in one buffer (256-byte aligned, in order), and the bytes it needs."""
    offsets: dict[str, int] = {}
    end = 0
    for name in arrays if names is None else names:
        shape, dtype = spec_of(arrays, name)
        offsets[name] = end
        end += aligned(int(np.prod(staged_shape(shape, pad_to))) * dtype.itemsize)
    return offsets, end


@dataclass(slots=True)
class _Buffer:
    pointer: int
    capacity: int


class HostMemory(Protocol):
    """Where the buffers come from: CudaRuntime (pinned), or gather_buffers.PlainMemory."""

    def host_alloc(self, nbytes: int) -> int: ...

    def free_host(self, pointer: int) -> None: ...


def _free_all(cudart: HostMemory, buffers: list[_Buffer]) -> None:
    for buffer in buffers:
        cudart.free_host(buffer.pointer)
    buffers.clear()


class PinnedStaging:
    """The pinned buffers of one instance; thread-safe (its runs take and give back buffers)."""

    def __init__(self, cudart: HostMemory, max_buffers: int, max_bytes: int = MAX_BYTES) -> None:
        if max_buffers < 1:
            raise ValueError("max_buffers must be at least 1")
        self._cudart = cudart
        self._max_buffers = max_buffers
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._owned: list[_Buffer] = []  # every buffer, free or in use: freed with this object
        self._free: list[_Buffer] = []
        # Freed when the instance is collected, not at close(): a run may still be using one then.
        weakref.finalize(self, _free_all, cudart, self._owned)

    @property
    def pinned_bytes(self) -> int:
        with self._lock:
            return sum(b.capacity for b in self._owned)

    def _take(self, nbytes: int) -> _Buffer | None:
        with self._lock:
            fits = [b for b in self._free if b.capacity >= nbytes]
            if fits:
                buffer = min(fits, key=lambda b: b.capacity)
                self._free.remove(buffer)
                return buffer
            if self._free:  # too small: replaced by a larger one below
                old = self._free.pop()
                self._owned.remove(old)
                self._cudart.free_host(old.pointer)
            elif len(self._owned) >= self._max_buffers:
                return None
            capacity = -(-nbytes // _GROW) * _GROW
            try:
                buffer = _Buffer(self._cudart.host_alloc(capacity), capacity)
            # Memory is scarce (pinned memory most): this batch goes unstaged.
            except (CudaError, MemoryError) as err:
                log.warning("no staging buffer of %d bytes for a batch: %s", capacity, err)
                return None
            self._owned.append(buffer)
            return buffer

    def _give_back(self, buffer: _Buffer) -> None:
        with self._lock:
            self._free.append(buffer)

    @contextmanager
    def stage(
        self, arrays: Mapping[str, Array], pad_to: int | None = None, names: Sequence[str] | None = None
    ) -> Iterator[dict[str, int] | None]:
        """Copy `arrays` (those `names`, else all) into one pinned buffer for the length of the
        block: each input's address in it, or None when the batch is not staged (too large, or every
        buffer busy). `pad_to`: each grown there to that many rows by repeating its last row
        (batch_padding.py), so a padded batch is copied once, not padded then staged; a batch not
        yet gathered is gathered here, so once too."""
        with self._staged(arrays, pad_to, names) as staged:
            yield None if staged is None else {name: pointer for name, (pointer, _) in staged.items()}

    @contextmanager
    def stage_arrays(self, arrays: Mapping[str, Array]) -> Iterator[dict[str, Array] | None]:
        """As `stage`, unpadded: each input as an array over its place in the buffer (None: not
        staged). Nothing read from them may outlive the block: the next batch overwrites them."""
        with self._staged(arrays, None, None) as staged:
            yield None if staged is None else {name: view for name, (_, view) in staged.items()}

    @contextmanager
    def _staged(
        self, arrays: Mapping[str, Array], pad_to: int | None, names: Sequence[str] | None
    ) -> Iterator[dict[str, tuple[int, Array]] | None]:
        offsets, nbytes = layout(arrays, pad_to, names)
        buffer = self._take(nbytes) if 0 < nbytes <= self._max_bytes else None
        if buffer is None:
            yield None
            return
        try:
            staged: dict[str, tuple[int, Array]] = {}
            for name in offsets:
                pointer = buffer.pointer + offsets[name]
                shape, dtype = spec_of(arrays, name)
                size_shape = staged_shape(shape, pad_to)
                size = int(np.prod(size_shape)) * dtype.itemsize
                if size:
                    raw = (ctypes.c_uint8 * size).from_address(pointer)
                    view = np.frombuffer(memoryview(raw), dtype=dtype).reshape(size_shape)
                    fill(view, arrays, name, shape)
                else:
                    view = np.empty(size_shape, dtype)
                staged[name] = (pointer, view)
            yield staged
        finally:
            self._give_back(buffer)
