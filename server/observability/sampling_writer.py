"""The sample writer: a bounded queue filled on the event loop, drained by one thread into files.

`put` only appends a reference under a short lock (or refuses when the queue is full in count or
bytes: the caller counts a drop). The thread feeds each sample to its model's drift monitor, then
writes the samples of one model version, in arrival order, as one `.npz` chunk under
`<root>/<model>/<version>/samples-<time_ns>-<pid>-<seq>.npz` (written to a temporary name, then
renamed), with the id of the load that sampled them (`load_ns`: a reload of the version starts a
new drift reference, and its files are told apart from the earlier load's); sample_layout.py
says what a chunk holds (BYTES unpadded, with their lengths). The chunks under `root` are kept
within `max_bytes`: the oldest are removed first (chunks left by an earlier run are counted when
the thread starts). Samples the thread has not written when `close` gives up are counted lost.
Tensor contents never reach the logs.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

import numpy as np
import numpy.typing as npt

from server.observability.drift import DriftMonitor, numeric
from server.observability.sample_layout import LOAD_KEY as LOAD_KEY  # re-exported: readers had it here
from server.observability.sample_layout import chunk_arrays, layout
from server.observability.sample_layout import exact_bytes as exact_bytes  # the earlier layout's reader
from server.pids import named_pid, pid_alive

log = logging.getLogger(__name__)

AnyArray = npt.NDArray[np.generic]
SaveFn = Callable[[IO[bytes], Mapping[str, AnyArray]], None]
FILE_GLOB = "samples-*.npz"
CHUNK_AGE_S = 10.0  # an open chunk is written at most this long after its first sample
CHUNK_MAX_BYTES = 4 * 1024 * 1024


class SampleSource(Protocol):
    """What the writer needs of the sampler a sample came from."""

    @property
    def directory(self) -> Path: ...  # relative to the writer's root: <model>/<version>

    @property
    def load_ns(self) -> int: ...  # the load's id: time.time_ns() when the version loaded

    @property
    def monitor(self) -> DriftMonitor | None: ...

    def wrote(self, samples: int) -> None: ...

    def lost(self, samples: int) -> None: ...


@dataclass(slots=True)
class Sample:
    source: SampleSource
    inputs: Mapping[str, AnyArray] | None  # None: outputs only
    outputs: Mapping[str, AnyArray]
    time_ns: int
    nbytes: int  # its size in a chunk (sample_layout.stored_bytes): the queue's and chunks' bounds


class _Abandoned(Exception):
    """close() gave up on the thread: what it writes now is counted lost already."""


def save_npz(file: IO[bytes], arrays: Mapping[str, AnyArray]) -> None:
    """BF16 saved as FP32 (exact): numpy writes ml_dtypes' bfloat16 as '|V2', which no reader can use."""
    np.savez(file, **{name: numeric(array) for name, array in arrays.items()})  # type: ignore[arg-type]


@dataclass
class WriterStats:
    files_written: int = 0
    files_removed: int = 0
    bytes_on_disk: int = 0
    write_errors: int = 0
    samples_written: int = 0


@dataclass
class _Files:
    """Chunks on disk, oldest first, and their total size."""

    paths: deque[tuple[Path, int]] = field(default_factory=deque)
    total: int = 0


@dataclass
class _Chunk:
    """One source's samples waiting to be written together."""

    since: float  # time.monotonic() of the first
    samples: list[Sample] = field(default_factory=list)
    nbytes: int = 0


class SampleWriter:
    def __init__(
        self,
        root: Path,
        max_bytes: int,
        queue_size: int,
        queue_bytes: int,
        save: SaveFn = save_npz,
        chunk_age_s: float = CHUNK_AGE_S,
    ) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._queue_size = queue_size
        self._queue_bytes = queue_bytes
        self._save = save
        # A chunk is a small share of the bound, written when that full or that old (or on flush),
        # or early when the open chunks hold over half of queue_bytes (_relieve).
        self._chunk_bytes = min(max(max_bytes // 16, 1), CHUNK_MAX_BYTES)
        self._chunk_age_s = chunk_age_s
        self._items: deque[Sample] = deque()
        self._queued_bytes = 0  # of the samples put and not yet written or lost, open chunks too
        self._pending = 0  # put but not yet in a file (or failed)
        # The same per source: what close() counts lost when the thread does not finish in time
        # (the process exits, a daemon thread dies mid-write: those samples had moved no counter).
        self._pending_of: dict[int, tuple[SampleSource, int]] = {}
        self._closing = False
        self._flushing = False
        self._said_too_large = False  # a sample larger than max_bytes was logged
        self._cond = threading.Condition()
        # The thread's own: per source, samples waiting to be written as one chunk, since when.
        self._open: dict[int, _Chunk] = {}
        # Held to count a chunk (written or lost) and to give up on the thread: never both (the
        # thread and close() take it, never the event loop).
        self._commit = threading.Lock()
        self._abandoned = False
        self._writing: Path | None = None  # the temporary file being written
        self._files = _Files()
        self._seq = 0
        self.stats = WriterStats()
        self._thread = threading.Thread(target=self._run, name="sluiceway-samples", daemon=True)
        self._thread.start()

    # -- the event loop's side ---------------------------------------------------------------

    def put(self, sample: Sample) -> bool:
        """Queue a sample; False (never blocking) when the queue is full or closed, or the sample
        is larger than every chunk kept (it would be removed as soon as written)."""
        if sample.nbytes > self.max_bytes:  # said once: it had passed for a full queue
            if not self._said_too_large:
                self._said_too_large = True
                why = "a sample of %d bytes is over sample_max_bytes (%d): dropped (samples_dropped_total)"
                log.warning(why, sample.nbytes, self.max_bytes)
            return False
        with self._cond:
            if (
                self._closing
                or len(self._items) >= self._queue_size
                or self._queued_bytes + sample.nbytes > self._queue_bytes
            ):
                return False
            self._items.append(sample)
            self._queued_bytes += sample.nbytes
            self._pending += 1
            key = id(sample.source)
            self._pending_of[key] = (sample.source, self._pending_of.get(key, (sample.source, 0))[1] + 1)
            self._cond.notify_all()
            return True

    def flush(self, timeout_s: float) -> bool:
        """Write every sample queued so far now, and wait for it; False on timeout. Off the loop."""
        with self._cond:
            self._flushing = True
            self._cond.notify_all()
            return self._cond.wait_for(lambda: self._pending == 0, timeout_s)

    def close(self, timeout_s: float) -> None:
        """Write what is queued (within the timeout), then stop the thread; what it has not
        written by then (or will not: its thread died) is counted lost, and the file it is writing
        removed."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout_s)
        with self._cond:
            unwritten = self._pending
        # A thread that died (something not an Exception escaped a save) leaves its samples pending.
        if self._thread.is_alive() or unwritten:
            self._abandon(timeout_s)

    def _abandon(self, timeout_s: float) -> None:
        # The process exits next, killing the daemon thread mid-write: a 394 MB .tmp had been left
        # and the samples counted nowhere.
        with self._commit:
            self._abandoned = True
            writing = self._writing
            with self._cond:
                left = list(self._pending_of.values())
                self._pending_of.clear()
                self._pending = 0
                self._items.clear()
                self._queued_bytes = 0
                self._cond.notify_all()
            for source, count in left:
                source.lost(count)
        if writing is not None:
            writing.unlink(missing_ok=True)
        lost = sum(count for _, count in left)
        if lost:
            log.error(
                "%d sampled requests not written within %.1f s of shutdown: counted lost", lost, timeout_s
            )

    # -- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        self._scan_existing()
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: bool(self._items) or self._closing or self._flushing, self._next_due()
                )
                batch: list[Sample] = []
                size = 0
                while self._items and (not batch or size + self._items[0].nbytes <= self._chunk_bytes):
                    batch.append(self._items.popleft())
                    size += batch[-1].nbytes
                # Their bytes stay counted until their chunk is written or lost (_count): the open
                # chunks and the one being saved had been outside sample_queue_bytes.
                force = (self._closing or self._flushing) and not self._items
            for sample in batch:
                self._collect(sample)
            self._relieve()
            self._write_due(force)
            with self._cond:
                if force:
                    self._flushing = False
                self._cond.notify_all()
                if force and self._closing:
                    return

    def _next_due(self) -> float | None:
        """Seconds until the oldest open chunk is due (None: nothing open)."""
        if not self._open:
            return None
        oldest = min(chunk.since for chunk in self._open.values())
        return max(0.0, oldest + self._chunk_age_s - time.monotonic())

    def _collect(self, sample: Sample) -> None:
        """Feed the sample's drift monitor, add it to its source's open chunk."""
        monitor = sample.source.monitor
        try:
            if monitor is not None:
                monitor.feed(sample.inputs, sample.outputs)
        except Exception:  # never lose the thread; log without contents
            log.exception("drift monitor of %s failed", sample.source.directory)
        key = id(sample.source)
        chunk = self._open.get(key)
        if chunk is not None and layout(sample) != layout(chunk.samples[0]):
            self._write_chunk(self._open.pop(key).samples)
            chunk = None
        if chunk is None:
            chunk = self._open[key] = _Chunk(time.monotonic())
        chunk.samples.append(sample)
        chunk.nbytes += sample.nbytes
        if chunk.nbytes >= self._chunk_bytes:
            self._write_chunk(self._open.pop(key).samples)

    def _relieve(self) -> None:
        """Write the largest open chunks while they hold over half of sample_queue_bytes: their
        bytes count against it until written, and waiting for a chunk to fill or age had refused
        nearly every sample meanwhile (3,007 of 3,039 over 3 s with a 64 KiB queue, none written)."""
        limit = self._queue_bytes // 2
        held = sum(chunk.nbytes for chunk in self._open.values())
        while held > limit and self._open:
            key = max(self._open, key=lambda k: self._open[k].nbytes)
            chunk = self._open.pop(key)
            held -= chunk.nbytes
            self._write_chunk(chunk.samples)

    def _write_due(self, force: bool) -> None:
        now = time.monotonic()
        for key, chunk in list(self._open.items()):
            if force or now - chunk.since >= self._chunk_age_s:
                del self._open[key]
                self._write_chunk(chunk.samples)

    def _write_chunk(self, run: list[Sample]) -> None:
        if self._abandoned:  # close() counted these lost
            return
        try:
            self._write_run(run)
        except _Abandoned:
            return
        except OSError as err:  # disk full, permissions: count, one line without contents, go on
            self.stats.write_errors += 1
            # One line: each failed chunk on a full disk had logged a 40-50 line traceback.
            log.error("writing %d samples under %s failed: %s", len(run), self.root, err.strerror or err)
            self._settle(run, written=False)  # on /metrics: 5,000 lost samples had moved no counter
            return
        except Exception:  # a bug: the traceback says where
            self.stats.write_errors += 1
            log.exception("writing %d samples under %s failed", len(run), self.root)
            self._settle(run, written=False)
            return

    def _settle(self, run: list[Sample], written: bool) -> None:
        """Count a chunk written or lost, unless close() gave up and counted it lost already."""
        with self._commit:
            if not self._abandoned:
                self._count(run, written)

    def _count(self, run: list[Sample], written: bool) -> None:
        """_settle's work, with _commit held. The bytes are freed before the source hears of the
        write, so a producer woken by `wrote` finds room (a test saw a put refused right after)."""
        source = run[0].source
        with self._cond:
            self._queued_bytes -= sum(sample.nbytes for sample in run)
            self._cond.notify_all()
        if written:
            self.stats.samples_written += len(run)
            source.wrote(len(run))
        else:
            source.lost(len(run))
        with self._cond:
            self._pending -= len(run)
            key = id(source)
            left = self._pending_of[key][1] - len(run)
            if left:
                self._pending_of[key] = (source, left)
            else:
                del self._pending_of[key]
            self._cond.notify_all()

    def _write_run(self, run: list[Sample]) -> None:
        source = run[0].source
        monitor = source.monitor
        arrays = chunk_arrays(run, source.load_ns, monitor.variable if monitor is not None else frozenset())
        directory = self.root / source.directory
        directory.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        name = f"samples-{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}.npz"
        temporary = directory / f".{name}.tmp"
        try:
            with self._commit:
                if self._abandoned:
                    raise _Abandoned
                self._writing = temporary
            with open(temporary, "wb") as file:
                self._save(file, arrays)
                file.flush()
                size = os.fstat(file.fileno()).st_size
            with self._commit:  # close() removes the temporary file once it gives up
                if self._abandoned:
                    raise _Abandoned
                os.replace(temporary, directory / name)
                self._writing = None
                self.stats.files_written += 1
                self._add_file(directory / name, size)  # before flush() returns: the bound kept
                self._count(run, written=True)  # with the rename: never also counted lost
        except BaseException:
            # A partial file left behind filled a small disk for good (outside the bytes bound).
            temporary.unlink(missing_ok=True)
            self._writing = None
            raise

    def _add_file(self, path: Path, size: int) -> None:
        files = self._files
        files.paths.append((path, size))
        files.total += size
        while files.total > self.max_bytes and files.paths:
            oldest, oldest_size = files.paths.popleft()
            oldest.unlink(missing_ok=True)
            files.total -= oldest_size
            self.stats.files_removed += 1
        self.stats.bytes_on_disk = files.total

    def _scan_existing(self) -> None:
        try:
            for partial in self.root.glob(f"*/*/.{FILE_GLOB}.tmp"):
                if not _writer_alive(partial.name):  # a process that died writing it
                    partial.unlink(missing_ok=True)
            found = sorted(self.root.glob(f"*/*/{FILE_GLOB}"), key=lambda p: p.name)
            for path in found:
                self._add_file(path, path.stat().st_size)
        except OSError:
            log.warning("could not scan %s for earlier samples", self.root)


def _writer_alive(partial_name: str) -> bool:
    """Whether the process named in `.samples-<ns>-<pid>-<seq>.npz.tmp` still runs (another
    worker writing it now), so its file is left alone."""
    pid = named_pid(partial_name, 2)
    return pid is not None and pid_alive(pid)
