"""The sample writer: a bounded queue filled on the event loop, drained by one thread into files.

`put` only appends a reference under a short lock (or refuses when the queue is full in count or
bytes: the caller counts a drop). The thread feeds each sample to its model's drift monitor, then
writes the samples of one model version, in arrival order, as one `.npz` chunk under
`<root>/<model>/<version>/samples-<time_ns>-<pid>-<seq>.npz` (written to a temporary name, then
renamed), with the id of the load that sampled them (`load_ns`: a reload of the version starts a
new drift reference, and its files are told apart from the earlier load's). BYTES tensors are
kept as fixed-width bytes plus each value's length (`len:in:<name>`), since numpy's fixed-width
bytes drop trailing NULs. The chunks under `root` are kept within `max_bytes`: the oldest are removed first
(chunks left by an earlier run are counted when the thread starts). Tensor contents never reach
the logs.
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
from server.pids import named_pid, pid_alive

log = logging.getLogger(__name__)

AnyArray = npt.NDArray[np.generic]
SaveFn = Callable[[IO[bytes], Mapping[str, AnyArray]], None]
FILE_GLOB = "samples-*.npz"
LENGTHS = "len:"  # + "in:<name>" / "out:<name>": each BYTES value's length in bytes
LOAD_KEY = "load_ns"  # the id of the load that sampled a chunk (absent in files before it)
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
    nbytes: int


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
        # A chunk is a small share of the bound, written when that full or that old (or on flush).
        self._chunk_bytes = min(max(max_bytes // 16, 1), CHUNK_MAX_BYTES)
        self._chunk_age_s = chunk_age_s
        self._items: deque[Sample] = deque()
        self._queued_bytes = 0
        self._pending = 0  # put but not yet in a file (or failed)
        self._closing = False
        self._flushing = False
        self._cond = threading.Condition()
        # The thread's own: per source, samples waiting to be written as one chunk, since when.
        self._open: dict[int, _Chunk] = {}
        self._done = 0  # samples the thread wrote (or failed) since it last settled _pending
        self._files = _Files()
        self._seq = 0
        self.stats = WriterStats()
        self._thread = threading.Thread(target=self._run, name="sluiceway-samples", daemon=True)
        self._thread.start()

    # -- the event loop's side ---------------------------------------------------------------

    def put(self, sample: Sample) -> bool:
        """Queue a sample; False (never blocking) when the queue is full or closed."""
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
            self._cond.notify_all()
            return True

    def flush(self, timeout_s: float) -> bool:
        """Write every sample queued so far now, and wait for it; False on timeout. Off the loop."""
        with self._cond:
            self._flushing = True
            self._cond.notify_all()
            return self._cond.wait_for(lambda: self._pending == 0, timeout_s)

    def close(self, timeout_s: float) -> None:
        """Write what is queued (within the timeout), then stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout_s)

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
                self._queued_bytes -= size
                force = (self._closing or self._flushing) and not self._items
            for sample in batch:
                self._collect(sample)
            self._write_due(force)
            with self._cond:
                self._pending -= self._done
                self._done = 0
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
        if chunk is not None and _layout(sample) != _layout(chunk.samples[0]):
            self._write_chunk(self._open.pop(key).samples)
            chunk = None
        if chunk is None:
            chunk = self._open[key] = _Chunk(time.monotonic())
        chunk.samples.append(sample)
        chunk.nbytes += sample.nbytes
        if chunk.nbytes >= self._chunk_bytes:
            self._write_chunk(self._open.pop(key).samples)

    def _write_due(self, force: bool) -> None:
        now = time.monotonic()
        for key, chunk in list(self._open.items()):
            if force or now - chunk.since >= self._chunk_age_s:
                del self._open[key]
                self._write_chunk(chunk.samples)

    def _write_chunk(self, run: list[Sample]) -> None:
        try:
            self._write_run(run)
        except OSError as err:  # disk full, permissions: count, one line without contents, go on
            self.stats.write_errors += 1
            run[0].source.lost(len(run))  # on /metrics: 5,000 lost samples had moved no counter
            # One line: each failed chunk on a full disk had logged a 40-50 line traceback.
            log.error("writing %d samples under %s failed: %s", len(run), self.root, err.strerror or err)
        except Exception:  # a bug: the traceback says where
            self.stats.write_errors += 1
            run[0].source.lost(len(run))
            log.exception("writing %d samples under %s failed", len(run), self.root)
        self._done += len(run)

    def _write_run(self, run: list[Sample]) -> None:
        source = run[0].source
        arrays = _chunk_arrays(run)
        directory = self.root / source.directory
        directory.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        name = f"samples-{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}.npz"
        temporary = directory / f".{name}.tmp"
        try:
            with open(temporary, "wb") as file:
                self._save(file, arrays)
            os.replace(temporary, directory / name)
        except BaseException:
            # A partial file left behind filled a small disk for good (outside the bytes bound).
            temporary.unlink(missing_ok=True)
            raise
        size = (directory / name).stat().st_size
        self.stats.files_written += 1
        self.stats.samples_written += len(run)
        source.wrote(len(run))
        self._add_file(directory / name, size)

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


def _layout(sample: Sample) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
    def one(prefix: str, tensors: Mapping[str, AnyArray]) -> list[tuple[str, str, tuple[int, ...]]]:
        return [
            (prefix + name, "S" if a.dtype.kind in "OS" else a.dtype.str, a.shape[1:])
            for name, a in tensors.items()
        ]

    return tuple(one("in:", sample.inputs or {}) + one("out:", sample.outputs))


def _chunk_arrays(run: list[Sample]) -> dict[str, AnyArray]:
    """Every tensor's rows of the run concatenated (BYTES: and their lengths), plus each sample's
    rows and time, and the load that sampled them (one source: one load)."""
    arrays: dict[str, AnyArray] = {}
    first = run[0]
    for prefix, tensors in (("in:", first.inputs or {}), ("out:", first.outputs)):
        for name in tensors:
            parts = [_at_least_1d(((s.inputs or {}) if prefix == "in:" else s.outputs)[name]) for s in run]
            if parts[0].dtype.kind in "OS":
                arrays[LENGTHS + prefix + name] = _joined([_lengths(part) for part in parts])
                parts = [_fixed_width(part) for part in parts]
            arrays[prefix + name] = _joined(parts)
    arrays["rows"] = np.array([_rows(s) for s in run], dtype=np.int64)
    arrays["time_ns"] = np.array([s.time_ns for s in run], dtype=np.int64)
    arrays[LOAD_KEY] = np.array([first.source.load_ns], dtype=np.int64)
    return arrays


def _joined(parts: list[AnyArray]) -> AnyArray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _rows(sample: Sample) -> int:
    for array in sample.outputs.values():
        return int(array.shape[0]) if array.ndim else 1
    return 0


def _at_least_1d(array: AnyArray) -> AnyArray:
    return array.reshape(1) if array.ndim == 0 else array


def _fixed_width(array: AnyArray) -> AnyArray:
    """BYTES as fixed-width bytes, loadable without pickle (trailing NULs dropped: see _lengths)."""
    if array.dtype.kind == "S":
        return array
    return np.asarray(array.tolist(), dtype=np.bytes_).reshape(array.shape)


def _lengths(array: AnyArray) -> AnyArray:
    """Each BYTES value's length: what a fixed-width value read back lacks is trailing NULs, so
    this restores it exactly (b"ab\\0" had read back as b"ab", b"\\0\\0" as b"")."""
    if array.dtype.kind == "S":  # already fixed-width: its own trailing NULs are gone
        return np.char.str_len(array).astype(np.int64)
    lengths = [len(value) for value in array.reshape(-1).tolist()]
    return np.array(lengths, dtype=np.int64).reshape(array.shape)


def exact_bytes(values: AnyArray, lengths: AnyArray) -> AnyArray:
    """A sample file's BYTES tensor as sent: `values` (`in:<name>`) padded back with the NULs numpy
    dropped, to `lengths` (`len:in:<name>`); an object array of bytes."""
    out = np.empty(values.shape, dtype=object)
    out.reshape(-1)[:] = [
        bytes(value).ljust(int(length), b"\0")
        for value, length in zip(values.reshape(-1), lengths.reshape(-1), strict=True)
    ]
    return out
