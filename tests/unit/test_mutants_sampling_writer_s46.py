"""The sample writer's survivors of mutation testing (forty-sixth session): what close() leaves when it
gives up on the thread (counters, queued bytes, the file being written, its log line), flush's timeout,
a dead thread, the chunks removed to keep the bound, and whose `.tmp` files the scan leaves alone."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO

import pytest

from server.observability.sample_layout import AnyArray
from server.observability.sampling_writer import Sample, SampleWriter, _writer_alive, save_npz
from tests.unit.test_sampling_h19b import HeldSave, Source, strings

LOGGER = "server.observability.sampling_writer"


class Writers:
    """The writers a test starts and the saves holding their threads: at teardown every save is
    released and every thread joined (the thread guard fails a file leaving one running)."""

    def __init__(self) -> None:
        self.writers: list[SampleWriter] = []
        self.holds: list[HeldSave] = []
        self.flushes: list[threading.Thread] = []

    def start(self, root: Path, save: HeldSave | None = None, max_bytes: int = 256 << 20) -> SampleWriter:
        if save is not None:
            self.holds.append(save)
        writer = SampleWriter(root, max_bytes, 1024, 64 << 20, save=save or save_npz, chunk_age_s=0)
        self.writers.append(writer)
        return writer

    def stop(self) -> None:
        for save in self.holds:
            save.release.set()
        for writer in self.writers:
            writer.close(30)
            with writer._cond:  # a flush waiting without a timeout (a mutant) ends too
                writer._pending = 0
                writer._cond.notify_all()
        for thread in self.flushes:
            thread.join(30)


@pytest.fixture()
def writers() -> Iterator[Writers]:
    started = Writers()
    yield started
    started.stop()


def put_one(writer: SampleWriter, source: Source) -> None:
    tensor = strings([b"v"], (1, 1))
    assert writer.put(Sample(source, {"X": tensor}, {"Y": tensor}, 0, 18))


def flush_elsewhere(writers: Writers, writer: SampleWriter, timeout_s: float) -> list[bool]:
    """flush(timeout_s) on another thread, joined for 10 s: its result, or [] if it had not returned."""
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(writer.flush(timeout_s)), name="s46-flush")
    writers.flushes.append(thread)
    thread.start()
    thread.join(10)
    return result


def given_up(
    writers: Writers, tmp_path: Path, puts: int = 3, timeout_s: float = 0.1
) -> tuple[SampleWriter, Source]:
    """A writer whose thread is held writing the first of `puts` samples when close() gives up."""
    held = HeldSave()
    writer = writers.start(tmp_path, held)
    source = Source()
    for _ in range(puts):
        put_one(writer, source)
        assert held.entered.wait(30)
    writer.close(timeout_s)
    held.release.set()
    writer._thread.join(30)
    assert not writer._thread.is_alive()
    return writer, source


# -- flush ------------------------------------------------------------------------------------------


def test_flush_returns_false_once_its_timeout_passes_while_the_thread_is_held(
    tmp_path: Path, writers: Writers
) -> None:
    held = HeldSave()
    writer = writers.start(tmp_path, held)
    source = Source()
    put_one(writer, source)
    assert held.entered.wait(30)
    began = time.monotonic()
    assert flush_elsewhere(writers, writer, 0.05) == [False]  # had waited for the write, however long
    assert time.monotonic() - began < 5
    assert source.written == 0
    held.release.set()
    assert writer.flush(30) and source.written == 1


def test_flush_with_a_zero_timeout_does_not_wait(tmp_path: Path, writers: Writers) -> None:
    held = HeldSave()
    writer = writers.start(tmp_path, held)
    put_one(writer, Source())
    assert held.entered.wait(30)
    assert flush_elsewhere(writers, writer, 0) == [False]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_flush_on_a_dead_thread_times_out_and_close_counts_its_samples_lost(
    tmp_path: Path, writers: Writers, caplog: pytest.LogCaptureFixture
) -> None:
    """A thread that died (SystemExit from a save, ignored by threading's excepthook) never writes
    what is pending: flush gives up at its timeout; close() does not wait on it, and counts what was
    pending lost (it had moved no counter: 0 lost, 0 written, 1 pending)."""

    def exits(file: IO[bytes], arrays: Mapping[str, AnyArray]) -> None:
        raise SystemExit

    writer = SampleWriter(tmp_path, 256 << 20, 1024, 64 << 20, save=exits, chunk_age_s=0)
    writers.writers.append(writer)
    source = Source()
    put_one(writer, source)
    writer._thread.join(30)
    assert not writer._thread.is_alive()
    assert flush_elsewhere(writers, writer, 0.05) == [False]
    assert list((tmp_path / "b" / "1").iterdir()) == []  # its temporary file removed as it died
    began = time.monotonic()
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        writer.close(30)
    assert time.monotonic() - began < 5
    assert (source.lost_count, source.written, writer._pending, writer._queued_bytes) == (1, 0, 0, 0)
    assert [r.getMessage() for r in caplog.records if r.name == LOGGER] == [
        "1 sampled requests not written within 30.0 s of shutdown: counted lost"
    ]


# -- close giving up (_abandon) -----------------------------------------------------------------


def test_close_giving_up_counts_every_pending_sample_lost_and_leaves_nothing_queued(
    tmp_path: Path, writers: Writers
) -> None:
    writer, source = given_up(writers, tmp_path)
    assert (source.lost_count, source.written) == (3, 0)
    assert writer._pending == 0 and writer._queued_bytes == 0
    assert writer._pending_of == {} and list(writer._items) == []
    assert writer.flush(0)  # nothing left to wait for
    assert writer.stats.samples_written == 0 and writer.stats.files_written == 0
    assert writer.stats.write_errors == 0
    assert list((tmp_path / "b" / "1").iterdir()) == []


def test_close_giving_up_logs_one_line_naming_the_lost_samples_and_the_timeout(
    tmp_path: Path, writers: Writers, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        given_up(writers, tmp_path, puts=3, timeout_s=0.1)
    records = [r for r in caplog.records if r.name == LOGGER]
    assert [(r.levelno, r.getMessage()) for r in records] == [
        (logging.ERROR, "3 sampled requests not written within 0.1 s of shutdown: counted lost")
    ]


def test_close_giving_up_on_a_write_whose_file_is_gone_already_removes_nothing_and_raises_nothing(
    tmp_path: Path, writers: Writers
) -> None:
    """The temporary file being written may be gone when close() gives up (the save removed it, or
    another process cleaned the directory): close() still returns, the samples counted lost."""

    class GoneSave(HeldSave):
        def __call__(self, file: IO[bytes], arrays: Mapping[str, AnyArray]) -> None:
            os.unlink(file.name)
            super().__call__(file, arrays)

    held = GoneSave()
    writer = writers.start(tmp_path, held)
    source = Source()
    put_one(writer, source)
    assert held.entered.wait(30)
    assert writer._writing is not None and not writer._writing.exists()
    writer.close(0.05)
    assert source.lost_count == 1
    held.release.set()
    writer._thread.join(30)
    assert not writer._thread.is_alive()
    assert list((tmp_path / "b" / "1").iterdir()) == []
    assert (source.lost_count, source.written) == (1, 0)


# -- keeping the bound (_add_file) --------------------------------------------------------------


def test_the_oldest_chunk_is_dropped_from_the_bound_even_when_already_removed(
    tmp_path: Path, writers: Writers
) -> None:
    """An earlier run's chunk (counted at start) removed by someone else before the bound drops it:
    the new chunk is still written and counted, the old one no longer counted on disk."""
    old = tmp_path / "b" / "1" / "samples-00000000000000000001-1-000001.npz"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"\0" * 99_000)

    class RemovesOld(HeldSave):  # runs after the thread's scan: the old chunk is counted
        def __call__(self, file: IO[bytes], arrays: Mapping[str, AnyArray]) -> None:
            old.unlink()
            save_npz(file, arrays)

    writer = writers.start(tmp_path, RemovesOld(), max_bytes=100_000)
    source = Source()
    put_one(writer, source)
    assert writer.flush(30)
    (new,) = (tmp_path / "b" / "1").iterdir()
    assert new.name.startswith("samples-") and new.name.endswith(f"-{os.getpid()}-000001.npz")
    assert (source.written, source.lost_count) == (1, 0)
    stats = writer.stats
    assert (stats.files_written, stats.files_removed, stats.write_errors) == (1, 1, 0)
    assert stats.samples_written == 1
    assert stats.bytes_on_disk == new.stat().st_size
    assert list(writer._files.paths) == [(new, new.stat().st_size)]


def test_chunks_over_the_bound_are_removed_oldest_first(tmp_path: Path, writers: Writers) -> None:
    directory = tmp_path / "b" / "1"
    directory.mkdir(parents=True)
    earlier = [directory / f"samples-0000000000000000000{n}-1-00000{n}.npz" for n in (1, 2)]
    for path in earlier:
        path.write_bytes(b"\0" * 49_900)
    writer = writers.start(tmp_path, max_bytes=100_000)
    source = Source()
    put_one(writer, source)
    assert writer.flush(30)
    kept = sorted(directory.iterdir())
    assert earlier[0] not in kept and earlier[1] in kept and len(kept) == 2
    assert writer.stats.files_removed == 1
    assert writer.stats.bytes_on_disk == sum(path.stat().st_size for path in kept)


# -- the scan at start: whose `.tmp` files are left (_writer_alive) -----------------------------


def partial_of(pid: int | str) -> str:
    return f".samples-00000000000000000001-{pid}-000001.npz.tmp"


def test_a_partial_file_of_a_running_process_is_its_writers() -> None:
    assert _writer_alive(partial_of(os.getppid()))  # another process, running


# Names made when the test runs: this process's pid differs between pytest-xdist's workers, and a
# parameter holding it made their collections differ.
@pytest.mark.parametrize(
    "make_name",
    [lambda: partial_of(os.getpid()), lambda: partial_of(999_999_999), lambda: ".samples-x.npz.tmp",
     lambda: partial_of("p")],
    ids=["this-process", "dead", "no-pid", "not-a-pid"],
)  # fmt: skip
def test_a_partial_file_of_this_process_a_dead_one_or_none_is_no_writers(
    make_name: Callable[[], str],
) -> None:
    assert not _writer_alive(make_name())


def test_the_scan_leaves_a_running_writers_partial_file_and_removes_a_dead_ones(
    tmp_path: Path, writers: Writers
) -> None:
    directory = tmp_path / "b" / "1"
    directory.mkdir(parents=True)
    running = directory / partial_of(os.getppid())
    dead = directory / partial_of(999_999_999)
    for path in (running, dead):
        path.write_bytes(b"partial")
    writer = writers.start(tmp_path)
    put_one(writer, Source())
    assert writer.flush(30)  # the scan came first
    assert running.exists() and not dead.exists()
    assert writer.stats.bytes_on_disk == sum(p.stat().st_size for p in directory.glob("samples-*.npz"))
