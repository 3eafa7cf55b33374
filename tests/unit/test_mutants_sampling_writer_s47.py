"""The sample writer's survivors of mutation testing (forty-seventh session): its thread (name, daemon,
the scan at start), the chunk and queue bounds (a chunk full at max_bytes // 16, the queue counting
every sample's bytes, pressure writing the largest open chunks), a chunk's age, what a failed write
or drift monitor counts and logs, and what a chunk file holds and is named.

The thread is held where a test must look at it between rounds: in a drift monitor (a sample's
`_collect`, before that round's chunks are relieved or written), in a save, or in the scan at start.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

import numpy as np
import pytest

from server.observability import sampling_writer
from server.observability.drift import DriftMonitor
from server.observability.sample_layout import LOAD_KEY, VARIABLE_KEY, AnyArray
from server.observability.sampling_writer import Sample, SampleWriter, SaveFn, save_npz
from tests.unit.test_sampling_h19b import HeldSave

LOGGER = "server.observability.sampling_writer"
WAIT_S = 30.0  # only a broken writer waits this long
LOAD_NS = 7


class Monitor(DriftMonitor):
    """A version's drift monitor that counts the samples the thread fed it and, held, keeps the thread
    in that feed (before the round's chunks are relieved or written) until released."""

    def __init__(self, held: bool = False) -> None:
        super().__init__(reference_rows=4, window_rows=4)
        self.release = threading.Event()
        if not held:
            self.release.set()
        self.feeds = 0
        self._fed = threading.Condition()

    def feed(self, inputs: Mapping[str, AnyArray] | None, outputs: Mapping[str, AnyArray]) -> None:
        super().feed(inputs, outputs)
        with self._fed:
            self.feeds += 1
            self._fed.notify_all()
        assert self.release.wait(WAIT_S)

    def wait_feeds(self, count: int) -> bool:
        with self._fed:
            return self._fed.wait_for(lambda: self.feeds >= count, WAIT_S)


class FailingMonitor(DriftMonitor):
    def feed(self, inputs: Mapping[str, AnyArray] | None, outputs: Mapping[str, AnyArray]) -> None:
        raise RuntimeError("a bug in drift")


class Source:
    """A sampled version: counts its samples written and lost; a waiter wakes on each write."""

    def __init__(self, directory: str = "b/1", monitor: DriftMonitor | None = None) -> None:
        self.directory = Path(directory)
        self.monitor = monitor
        self.load_ns = LOAD_NS
        self.written = 0
        self.lost_count = 0
        self._changed = threading.Condition()

    def wrote(self, samples: int) -> None:
        with self._changed:
            self.written += samples
            self._changed.notify_all()

    def lost(self, samples: int) -> None:
        self.lost_count += samples

    def wait_written(self, count: int) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.written >= count, WAIT_S)


def sample(source: Source, nbytes: int, width: int = 2, value: float = 0.0) -> Sample:
    """Outputs only: one row of `width` floats; `nbytes` is what the queue's and chunks' bounds count."""
    return Sample(source, None, {"y": np.full((1, width), value, np.float32)}, time.time_ns(), nbytes)


def chunk_files(root: Path, directory: str = "b/1") -> list[Path]:
    return sorted((root / directory).glob("samples-*.npz"))


def widths(paths: list[Path]) -> list[tuple[int, ...]]:
    """Each chunk's `out:y` shape: (its samples' rows, their width)."""
    shapes = []
    for path in paths:
        with np.load(path) as data:
            shapes.append(data["out:y"].shape)
    return shapes


class Harness:
    """The writers a test starts, their threads, and the events holding them: at teardown every hold
    is released and every writer closed (the thread guard fails a file leaving a thread running)."""

    def __init__(self) -> None:
        self.writers: list[SampleWriter] = []
        self.threads: dict[int, list[threading.Thread]] = {}
        self.releases: list[threading.Event] = []

    def writer(
        self,
        root: Path,
        *,
        max_bytes: int = 256 << 20,
        queue_bytes: int = 64 << 20,
        save: SaveFn = save_npz,
        chunk_age_s: float = 3600.0,  # a chunk is written full, pressed, or at close unless a test says
    ) -> SampleWriter:
        before = set(threading.enumerate())
        writer = SampleWriter(root, max_bytes, 1024, queue_bytes, save=save, chunk_age_s=chunk_age_s)
        self.writers.append(writer)
        self.threads[id(writer)] = [thread for thread in threading.enumerate() if thread not in before]
        return writer

    def thread(self, writer: SampleWriter) -> threading.Thread:
        (thread,) = self.threads[id(writer)]
        return thread

    def monitor(self, held: bool = False) -> Monitor:
        monitor = Monitor(held)
        self.releases.append(monitor.release)
        return monitor

    def stop(self) -> None:
        for release in self.releases:
            release.set()
        for writer in self.writers:
            writer.close(WAIT_S)


@pytest.fixture()
def harness() -> Iterator[Harness]:
    started = Harness()
    yield started
    started.stop()


def hold_thread(harness: Harness, writer: SampleWriter) -> Monitor:
    """Holds the thread in the drift monitor of a 1-byte probe sample (of its own version). The
    samples the thread had fed to their monitors before this put have been through a whole round by
    then: their chunks pressed out, written when due, or left open. Release the returned monitor."""
    monitor = harness.monitor(held=True)
    assert writer.put(sample(Source("probe/1", monitor), 1))
    assert monitor.wait_feeds(1)
    return monitor


def slow_scan(root: Path) -> tuple[Path, threading.Event, threading.Event]:
    """`root` as a path whose first glob (the thread's scan for an earlier run's chunks, at start)
    waits until released: a large sample directory on a slow disk. Returns it, `scanning`, `release`."""
    scanning = threading.Event()
    release = threading.Event()

    class SlowRoot(type(root)):  # type: ignore[misc]
        def glob(self, pattern: str) -> Iterator[Path]:
            scanning.set()
            assert release.wait(WAIT_S)
            return super().glob(pattern)  # type: ignore[no-any-return]

    return SlowRoot(root), scanning, release


class Clock:
    """The writer's clock, still: `monotonic` (a chunk's age) and `time_ns` (its file's name)."""

    def __init__(self, now: float, ns: int) -> None:
        self.now = now
        self.ns = ns

    def monotonic(self) -> float:
        return self.now

    def time_ns(self) -> int:
        return self.ns


def messages(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER]


# -- the thread -----------------------------------------------------------------------------------


def test_the_writers_thread_is_a_daemon_named_sluiceway_samples(tmp_path: Path, harness: Harness) -> None:
    """Operators tell it by name (thread dumps, a log's threadName, the thread guard's report); a
    daemon, so a process whose writer is stuck on a slow disk still exits after close() gave up."""
    writer = harness.writer(tmp_path)
    thread = harness.thread(writer)
    assert (thread.name, thread.daemon) == ("sluiceway-samples", True)
    writer.close(WAIT_S)
    assert not thread.is_alive()


def test_samples_put_while_the_thread_scans_earlier_chunks_still_share_a_chunk(
    tmp_path: Path, harness: Harness
) -> None:
    """The scan of a large sample directory at start takes a while: a sample put meanwhile waits in
    its open chunk like any other (not written alone, as if a flush had been asked for)."""
    root, scanning, release = slow_scan(tmp_path)
    harness.releases.append(release)
    writer = harness.writer(root)
    assert scanning.wait(WAIT_S)
    monitor = harness.monitor()
    source = Source(monitor=monitor)
    assert writer.put(sample(source, 10))
    release.set()
    assert monitor.wait_feeds(1)
    probe = hold_thread(harness, writer)
    assert (source.written, chunk_files(tmp_path)) == (0, [])
    probe.release.set()
    assert writer.put(sample(source, 10, value=1.0))
    writer.close(WAIT_S)
    (path,) = chunk_files(tmp_path)
    with np.load(path) as data:
        assert data["out:y"][:, 0].tolist() == [0.0, 1.0] and data["rows"].tolist() == [1, 1]
    assert (source.written, source.lost_count) == (2, 0)


def test_close_giving_up_on_a_thread_still_scanning_counts_what_was_put_lost(
    tmp_path: Path, harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """Stopped before the scan at start ended (nothing written yet): close() returns, the samples
    counted lost and logged; the thread ends once its scan does, writing nothing."""
    root, scanning, release = slow_scan(tmp_path)
    harness.releases.append(release)
    writer = harness.writer(root)
    assert scanning.wait(WAIT_S)
    source = Source()
    for _ in range(2):
        assert writer.put(sample(source, 10))
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        writer.close(0.1)
    assert (source.lost_count, source.written) == (2, 0)
    assert messages(caplog) == [
        (logging.ERROR, "2 sampled requests not written within 0.1 s of shutdown: counted lost")
    ]
    release.set()
    writer.close(WAIT_S)
    assert not harness.thread(writer).is_alive()
    assert list(tmp_path.rglob("*samples-*")) == []
    assert (source.lost_count, source.written, writer.stats.files_written) == (2, 0, 0)


def test_close_giving_up_on_a_thread_held_after_a_written_chunk_counts_the_rest_lost(
    tmp_path: Path, harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """A chunk written, then the thread held (here in a drift monitor) at shutdown: close() returns,
    what was not written counted lost; the written chunk kept."""
    writer = harness.writer(tmp_path)
    first = Source("a/1")
    assert writer.put(sample(first, 10))
    assert writer.flush(WAIT_S) and first.written == 1
    monitor = harness.monitor(held=True)
    second = Source("b/1", monitor)
    assert writer.put(sample(second, 10))
    assert monitor.wait_feeds(1)
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        writer.close(0.1)
    assert (second.lost_count, second.written) == (1, 0)
    assert messages(caplog) == [
        (logging.ERROR, "1 sampled requests not written within 0.1 s of shutdown: counted lost")
    ]
    monitor.release.set()
    writer.close(WAIT_S)
    assert not harness.thread(writer).is_alive()
    assert len(chunk_files(tmp_path, "a/1")) == 1 and list((tmp_path / "b" / "1").glob("*samples-*")) == []
    assert (first.written, first.lost_count, second.lost_count, second.written) == (1, 0, 1, 0)


# -- the bounds: queue, chunk, pressure -----------------------------------------------------------


def test_a_sample_as_large_as_max_bytes_is_taken_and_one_byte_larger_refused(
    tmp_path: Path, harness: Harness
) -> None:
    writer = harness.writer(tmp_path, max_bytes=64 * 1024)
    source = Source()
    assert not writer.put(sample(source, 64 * 1024 + 1))
    assert writer.put(sample(source, 64 * 1024))
    writer.close(WAIT_S)
    assert (source.written, source.lost_count, len(chunk_files(tmp_path))) == (1, 0, 1)


def test_every_queued_sample_counts_against_the_queue_bytes(tmp_path: Path, harness: Harness) -> None:
    """Two 400-byte samples queued behind one being written fill 1,000 bytes but 800 of them; a
    third is refused (the caller counts it dropped); 200 more fit exactly."""
    held = HeldSave()
    harness.releases.append(held.release)
    writer = harness.writer(tmp_path, queue_bytes=1000, save=held, chunk_age_s=0)
    source = Source()
    assert writer.put(sample(source, 400))
    assert held.entered.wait(WAIT_S)  # being written: its bytes still count
    assert [writer.put(sample(source, 400)) for _ in range(2)] == [True, False]
    assert writer.put(sample(source, 200))
    held.release.set()
    writer.close(WAIT_S)
    assert (source.written, source.lost_count) == (3, 0)


@pytest.mark.parametrize(
    ("max_bytes", "sizes", "files"),
    [
        (16 * 1024 + 8, [1024, 1024], 2),  # chunks of 1024 bytes: each sample fills one
        (16 * 1024, [1000, 1000], 1),  # 1000 waits for more; 2000 fills the chunk
        (16, [1, 1], 2),  # chunks of 1 byte (at least 1)
    ],
    ids=["each_fills_a_chunk", "two_fill_a_chunk", "the_smallest_bound"],
)
def test_a_chunk_is_written_once_it_holds_a_sixteenth_of_max_bytes(
    tmp_path: Path, harness: Harness, max_bytes: int, sizes: list[int], files: int
) -> None:
    """A chunk is a small share of the bound (max_bytes // 16, at least a byte), written once full."""
    writer = harness.writer(tmp_path, max_bytes=max_bytes)
    source = Source()
    for size in sizes:
        assert writer.put(sample(source, size))
    writer.close(WAIT_S)
    stats = writer.stats
    assert (stats.files_written, stats.samples_written, stats.write_errors) == (files, 2, 0)
    assert (source.written, source.lost_count) == (2, 0)


def test_an_open_chunk_of_half_the_queue_bytes_waits_and_one_byte_more_is_written(
    tmp_path: Path, harness: Harness
) -> None:
    """Open chunks are written early only while they hold over half of sample_queue_bytes."""
    writer = harness.writer(tmp_path, queue_bytes=3000)
    monitor = harness.monitor()
    source = Source("a/1", monitor)
    assert writer.put(sample(source, 1500))
    assert monitor.wait_feeds(1)
    probe = hold_thread(harness, writer)  # its byte not yet counted in an open chunk
    assert (source.written, chunk_files(tmp_path, "a/1")) == (0, [])
    probe.release.set()
    assert source.wait_written(1)  # 1501 bytes open: over half; without a flush or its age
    assert len(chunk_files(tmp_path, "a/1")) == 1
    writer.close(WAIT_S)


def test_pressure_writes_the_largest_open_chunk_and_stops_at_half_the_queue_bytes(
    tmp_path: Path, harness: Harness
) -> None:
    """1,710 bytes open with 1,500 allowed: the 1,600-byte chunk is written, the 100- and 10-byte
    ones left to fill. Twice, the sizes swapped between the two versions: whichever is the larger."""
    x_monitor, y_monitor = harness.monitor(), harness.monitor()
    x, y = Source("x/1", x_monitor), Source("y/1", y_monitor)
    gate_monitor = harness.monitor(held=True)
    gate = Source("g/1", gate_monitor)
    for round_, (large, small) in enumerate([(x, y), (y, x)]):
        root = tmp_path / f"round{round_}"
        writer = harness.writer(root, queue_bytes=3000)
        gate_monitor.release.clear()
        assert writer.put(sample(gate, 10))
        assert gate_monitor.wait_feeds(round_ + 1)  # held: the next two are taken in one round
        assert writer.put(sample(large, 1600)) and writer.put(sample(small, 100))
        gate_monitor.release.set()
        assert x_monitor.wait_feeds(round_ + 1) and y_monitor.wait_feeds(round_ + 1)
        probe = hold_thread(harness, writer)
        on_disk = [path.parent.relative_to(root) for path in root.glob("*/*/samples-*.npz")]
        assert on_disk == [large.directory], f"round {round_}"
        probe.release.set()
        writer.close(WAIT_S)
        assert len(list(root.glob("*/*/samples-*.npz"))) == 4  # the rest at close
    assert (x.written, y.written, gate.written, x.lost_count + y.lost_count) == (2, 2, 2, 0)


# -- a chunk's age ----------------------------------------------------------------------------------


def test_an_open_chunk_is_written_at_its_age_with_nothing_else_put(tmp_path: Path, harness: Harness) -> None:
    """The thread wakes when the oldest open chunk is due: no other sample or flush needed."""
    writer = harness.writer(tmp_path, chunk_age_s=0.3)
    source = Source()
    assert writer.put(sample(source, 10))
    assert source.wait_written(1)
    assert len(chunk_files(tmp_path)) == 1
    writer.close(WAIT_S)


def test_a_chunk_is_due_when_exactly_its_age_old_and_not_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, harness: Harness
) -> None:
    """A coarse clock (15.6 ms steps on Windows) often reads a chunk exactly chunk_age_s old: due."""
    clock = Clock(now=1000.0, ns=time.time_ns())
    monkeypatch.setattr(sampling_writer, "time", clock)
    writer = harness.writer(tmp_path, chunk_age_s=5.0)
    monitor = harness.monitor()
    source = Source("a/1", monitor)
    assert writer.put(sample(source, 10))
    assert monitor.wait_feeds(1)
    probe = hold_thread(harness, writer)
    assert source.written == 0  # 0 s old
    clock.now = 1005.0
    probe.release.set()  # that round writes what is due
    later = hold_thread(harness, writer)
    assert source.written == 1
    assert len(chunk_files(tmp_path, "a/1")) == 1
    later.release.set()
    writer.close(WAIT_S)


# -- failures: a save, a drift monitor ------------------------------------------------------------


def test_each_failed_write_on_a_full_disk_is_counted_and_logged_naming_the_root(
    tmp_path: Path, harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    def full_disk(file: IO[bytes], arrays: Mapping[str, AnyArray]) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    writer = harness.writer(tmp_path, save=full_disk)
    source = Source()
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        for width in (2, 3, 3):  # two chunks: a sample of another layout closes the first
            assert writer.put(sample(source, 10, width=width))
        writer.close(WAIT_S)
    assert messages(caplog) == [
        (logging.ERROR, f"writing 1 samples under {tmp_path} failed: No space left on device"),
        (logging.ERROR, f"writing 2 samples under {tmp_path} failed: No space left on device"),
    ]
    assert writer.stats.write_errors == 2
    assert (source.lost_count, source.written, writer.stats.samples_written) == (3, 0, 0)
    assert list((tmp_path / "b" / "1").iterdir()) == []


def test_a_save_failing_with_a_bug_is_counted_and_logged_with_its_traceback_and_writing_goes_on(
    tmp_path: Path, harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """A save raising something not an OSError (a bug): its chunk counted lost and a write error,
    logged with where it happened; the thread goes on to write the next chunk."""
    calls: list[int] = []

    def fails_twice(file: IO[bytes], arrays: Mapping[str, AnyArray]) -> None:
        calls.append(len(calls))
        if len(calls) <= 2:
            raise ValueError("a bug in the save")
        save_npz(file, arrays)

    writer = harness.writer(tmp_path, save=fails_twice)
    source = Source()
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        for width in (2, 2, 3, 4):  # chunks of 2, 1 and 1 samples
            assert writer.put(sample(source, 10, width=width))
        writer.close(WAIT_S)
    assert messages(caplog) == [
        (logging.ERROR, f"writing 2 samples under {tmp_path} failed"),
        (logging.ERROR, f"writing 1 samples under {tmp_path} failed"),
    ]
    for record in (r for r in caplog.records if r.name == LOGGER):
        assert record.exc_info is not None and record.exc_info[0] is ValueError
    stats = writer.stats
    assert (stats.write_errors, stats.files_written, stats.samples_written) == (2, 1, 1)
    assert (source.lost_count, source.written) == (3, 1)
    assert widths(chunk_files(tmp_path)) == [(1, 4)]
    assert list((tmp_path / "b" / "1").glob(".*")) == []


def test_a_failing_drift_monitor_is_logged_naming_its_version_and_the_sample_still_written(
    tmp_path: Path, harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    writer = harness.writer(tmp_path)
    source = Source("m/3", FailingMonitor(4, 4))
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        assert writer.put(sample(source, 10))
        writer.close(WAIT_S)
    assert messages(caplog) == [(logging.ERROR, "drift monitor of m/3 failed")]
    (record,) = [r for r in caplog.records if r.name == LOGGER]
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError
    assert (source.written, source.lost_count, len(chunk_files(tmp_path, "m/3"))) == (1, 0, 1)


# -- chunks: layout, counting, contents, names ----------------------------------------------------


def test_a_sample_of_another_layout_closes_its_versions_open_chunk(tmp_path: Path, harness: Harness) -> None:
    """Samples whose tensors differ past the rows (a -1 dim) cannot share a chunk's arrays: the open
    chunk is written and a new one begun; nothing lost, no error."""
    writer = harness.writer(tmp_path)
    source = Source()
    for width in (2, 3, 3):
        assert writer.put(sample(source, 10, width=width))
    writer.close(WAIT_S)
    assert widths(chunk_files(tmp_path)) == [(1, 2), (2, 3)]
    stats = writer.stats
    assert (stats.files_written, stats.samples_written, stats.write_errors) == (2, 3, 0)
    assert (source.written, source.lost_count) == (3, 0)


def test_a_versions_samples_over_several_chunks_are_each_counted_once(
    tmp_path: Path, harness: Harness
) -> None:
    held = HeldSave()
    harness.releases.append(held.release)
    writer = harness.writer(tmp_path, save=held, chunk_age_s=0)
    source = Source()
    assert writer.put(sample(source, 10))
    assert held.entered.wait(WAIT_S)  # the first chunk being written, two samples queued behind it
    for _ in range(2):
        assert writer.put(sample(source, 10))
    held.release.set()
    writer.close(WAIT_S)
    assert (source.written, source.lost_count) == (3, 0)
    stats = writer.stats
    assert (stats.files_written, stats.samples_written, stats.write_errors) == (2, 3, 0)
    assert widths(chunk_files(tmp_path)) == [(1, 2), (2, 2)]


def test_a_chunk_names_the_tensors_its_versions_drift_monitor_pools(tmp_path: Path, harness: Harness) -> None:
    """`sluiceway drift` has no model config: a chunk says which tensors are variable-length (pooled
    by the server's monitor), or the CLI scores their columns as features."""
    source = Source(monitor=DriftMonitor(4, 4, variable=frozenset({"out:y"})))
    writer = harness.writer(tmp_path)
    assert writer.put(sample(source, 10))
    writer.close(WAIT_S)
    (path,) = chunk_files(tmp_path)
    with np.load(path) as data:
        assert data[VARIABLE_KEY].tolist() == ["out:y"] and data[LOAD_KEY].tolist() == [LOAD_NS]


def test_chunks_written_within_one_tick_of_the_clock_are_all_kept_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, harness: Harness
) -> None:
    """File names hold the time and a sequence number: chunks written while the clock reads the same
    (a coarse clock) do not replace one another, and sort in the order written."""
    clock = Clock(now=1000.0, ns=1_700_000_000_000_000_000)
    monkeypatch.setattr(sampling_writer, "time", clock)
    writer = harness.writer(tmp_path)
    source = Source()
    for width in (2, 3, 4):
        assert writer.put(sample(source, 10, width=width))
    writer.close(WAIT_S)
    files = chunk_files(tmp_path)
    assert [path.name for path in files] == [
        f"samples-{clock.ns:020d}-{os.getpid()}-{seq:06d}.npz" for seq in (1, 2, 3)
    ]
    assert widths(files) == [(1, 2), (1, 3), (1, 4)]
    assert writer.stats.files_written == 3
    assert writer.stats.bytes_on_disk == sum(path.stat().st_size for path in files)


# -- a round's batch: what the thread takes from the queue at once ---------------------------------


def test_a_round_takes_queued_samples_up_to_exactly_a_chunks_bytes_and_no_more(
    tmp_path: Path, harness: Harness
) -> None:
    """Samples queued while the thread is busy are taken in rounds of at most a chunk's bytes (1,024
    here): 500 + 24 + 500 bytes fill one round exactly, the next byte waits for the next. With every
    open chunk due at once (age 0), a version's samples taken in one round share a file, so the files
    show the rounds: more per round let the queue's bytes pile up in open chunks, fewer split chunks."""
    writer = harness.writer(tmp_path, max_bytes=16 * 1024, chunk_age_s=0)
    gate_monitor = harness.monitor(held=True)
    assert writer.put(sample(Source("g/1", gate_monitor), 1))
    assert gate_monitor.wait_feeds(1)  # held: the next four queue up behind it
    x, y = Source("x/1"), Source("y/1")
    for source, size, value in [(x, 500, 0.0), (y, 24, 0.0), (x, 500, 1.0), (y, 1, 1.0)]:
        assert writer.put(sample(source, size, value=value))
    gate_monitor.release.set()
    assert x.wait_written(2) and y.wait_written(2)
    assert widths(chunk_files(tmp_path, "x/1")) == [(2, 2)]
    assert widths(chunk_files(tmp_path, "y/1")) == [(1, 2), (1, 2)]
    writer.close(WAIT_S)
    assert (x.lost_count, y.lost_count, writer.stats.files_written) == (0, 0, 4)


# -- a flush ------------------------------------------------------------------------------------------


def test_samples_put_after_a_flush_wait_in_their_open_chunk_again(tmp_path: Path, harness: Harness) -> None:
    """A flush writes what was queued before it, once: later samples share chunks as before (a flush
    left standing wrote every later sample alone, and woke the thread without end)."""
    writer = harness.writer(tmp_path)
    monitor = harness.monitor()
    source = Source(monitor=monitor)
    assert writer.put(sample(source, 10))
    assert writer.flush(WAIT_S) and source.written == 1
    assert writer.put(sample(source, 10, value=1.0))
    assert monitor.wait_feeds(2)
    probe = hold_thread(harness, writer)
    assert (source.written, len(chunk_files(tmp_path))) == (1, 1)
    probe.release.set()
    assert writer.put(sample(source, 10, value=2.0))
    writer.close(WAIT_S)
    files = chunk_files(tmp_path)
    assert widths(files) == [(1, 2), (2, 2)]
    with np.load(files[1]) as data:
        assert data["out:y"][:, 0].tolist() == [1.0, 2.0]
    assert (source.written, source.lost_count, writer.stats.files_written) == (3, 0, 3)


# -- waking for a chunk's age ---------------------------------------------------------------------------


class CountingClock(Clock):
    """A still clock that counts its reads: a thread reading it without end is spinning."""

    def __init__(self, now: float, ns: int) -> None:
        super().__init__(now, ns)
        self.reads = 0
        self._read = threading.Condition()

    def monotonic(self) -> float:
        with self._read:
            self.reads += 1
            self._read.notify_all()
        return self.now

    def wait_reads(self, count: int) -> bool:
        with self._read:
            return self._read.wait_for(lambda: self.reads >= count, WAIT_S)


def test_a_thread_with_a_chunk_not_yet_due_sleeps_instead_of_spinning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, harness: Harness
) -> None:
    """With an open chunk an hour from due and nothing put, the thread sleeps (a sampling server
    otherwise burns a core between requests): after its round it reads the clock a few times, then
    not again until woken (here by the next probe put)."""
    clock = CountingClock(now=1000.0, ns=time.time_ns())
    monkeypatch.setattr(sampling_writer, "time", clock)
    writer = harness.writer(tmp_path)
    monitor = harness.monitor()
    source = Source(monitor=monitor)
    assert writer.put(sample(source, 10))
    assert monitor.wait_feeds(1)
    probe = hold_thread(harness, writer)
    before = clock.reads
    probe.release.set()
    assert clock.wait_reads(before + 2)  # the round done: its chunks due or not, then how long to sleep
    later = hold_thread(harness, writer)
    assert clock.reads - before < 10
    later.release.set()
    writer.close(WAIT_S)
    assert (source.written, source.lost_count) == (1, 0)


# -- the scan at start ----------------------------------------------------------------------------------


def test_the_scan_counts_earlier_chunks_when_another_worker_removed_a_partial_file_first(
    tmp_path: Path, harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """Workers starting together scan the same root: a dead writer's partial file removed by another
    between this scan's listing and its removal is no error; the earlier chunks are still counted (the
    bound kept), nothing logged."""
    directory = tmp_path / "b" / "1"
    directory.mkdir(parents=True)
    (directory / f".samples-00000000000000000001-{os.getpid()}-000001.npz.tmp").write_bytes(b"partial")
    earlier = directory / f"samples-00000000000000000002-{os.getpid()}-000001.npz"
    earlier.write_bytes(b"x" * 10_000)

    class RacedRoot(type(tmp_path)):  # type: ignore[misc]
        def glob(self, pattern: str) -> Iterator[Path]:
            found = list(super().glob(pattern))
            if pattern.endswith(".tmp"):
                for path in found:  # the other worker's scan, just before this one's
                    path.unlink()
            return iter(found)

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        writer = harness.writer(RacedRoot(tmp_path), max_bytes=20_000)
        source = Source()
        assert writer.put(sample(source, 10))
        writer.close(WAIT_S)
    assert messages(caplog) == []
    files = chunk_files(tmp_path)
    assert earlier in files and len(files) == 2
    assert writer.stats.bytes_on_disk == sum(path.stat().st_size for path in files)
    assert list(directory.glob(".*")) == []


def test_the_oldest_earlier_chunk_is_removed_first_whichever_versions_it_is(
    tmp_path: Path, harness: Harness
) -> None:
    """Chunks left by an earlier run are removed oldest first by the time in their names, across
    every version's directory: not a/1's newer chunk because its directory sorts first."""
    newer = tmp_path / "a" / "1" / f"samples-00000000000000000002-{os.getpid()}-000001.npz"
    older = tmp_path / "b" / "1" / f"samples-00000000000000000001-{os.getpid()}-000001.npz"
    for path in (newer, older):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x" * 10_000)
    writer = harness.writer(tmp_path, max_bytes=20_000)
    source = Source("c/1")
    assert writer.put(sample(source, 10))
    writer.close(WAIT_S)
    assert newer.exists() and not older.exists()
    assert (writer.stats.files_removed, source.written, len(chunk_files(tmp_path, "c/1"))) == (1, 1, 1)


def test_a_root_that_cannot_be_scanned_is_logged_naming_it_and_samples_still_written(
    tmp_path: Path, harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """An unreadable sample directory at start: one warning naming it (the bound then counts only
    this run's chunks), and sampling goes on."""

    class UnreadableRoot(type(tmp_path)):  # type: ignore[misc]
        def glob(self, pattern: str) -> Iterator[Path]:
            raise PermissionError(errno.EACCES, "Permission denied")

    root = UnreadableRoot(tmp_path)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        writer = harness.writer(root)
        source = Source()
        assert writer.put(sample(source, 10))
        writer.close(WAIT_S)
    assert messages(caplog) == [(logging.WARNING, f"could not scan {tmp_path} for earlier samples")]
    assert (source.written, source.lost_count, len(chunk_files(tmp_path))) == (1, 0, 1)
