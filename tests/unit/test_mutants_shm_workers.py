"""What the mutation run of the workers' system shared memory (server/protocol/shm_book.py,
booked_mappings.py, shm_workers.py) found untested: the book's files and their modes, the refusals'
whole messages, an Unregister's reach, which mappings a worker keeps when the counter moves, a
Register or a first use that fails halfway, and the registry the settings make. Two workers are
two registries over one share directory (as tests/unit/test_shm_book.py); tests/MUTANTS.md lists
the mutants these tests kill. The CUDA registry's: test_mutants_cuda_shm_workers.py."""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import gc
import logging
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from server.errors import RegionExists, RegionNotFound, SharedMemoryLimit
from server.protocol import booked_mappings, shm_workers
from server.protocol.shared_memory import SharedMemoryRegistry
from server.protocol.shm_book import ShmBook, adopt, system_book
from server.protocol.shm_workers import WorkersRegistry, system_registry


@pytest.fixture
def objects(tmp_path: Path) -> Path:
    (tmp_path / "objects").mkdir()
    return tmp_path / "objects"


@pytest.fixture
def share(tmp_path: Path) -> Path:
    (tmp_path / "share").mkdir()
    return tmp_path / "share"


@pytest.fixture
def worker(objects: Path, share: Path) -> Iterator[Any]:
    made: list[WorkersRegistry] = []

    def make(max_regions: int = 8, max_bytes: int = 1 << 20) -> WorkersRegistry:
        registry = WorkersRegistry(
            system_book(share), allowed=True, max_regions=max_regions, max_bytes=max_bytes, directory=objects
        )
        made.append(registry)
        return registry

    yield make
    for registry in made:
        registry.close()


def test_the_books_files_are_the_server_users_only(share: Path) -> None:
    book = system_book(share)
    assert stat.S_IMODE(os.stat(share / "shm").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(share / "shm" / "generation").st_mode) == 0o600
    book.close()


def test_the_limits_refusals_name_the_region_and_the_limit(objects: Path, worker: Any) -> None:
    a = worker(max_regions=1, max_bytes=4096)
    (objects / "o").write_bytes(bytes(8192))
    with pytest.raises(SharedMemoryLimit) as refused:
        a.register("big", "/o", 0, 8192)
    assert str(refused.value) == (
        "cannot register shared memory region 'big' of 8192 bytes: 0 bytes are mapped and "
        "max_shm_bytes is 4096"
    )
    a.register("one", "/o", 0, 64)
    with pytest.raises(SharedMemoryLimit) as refused:
        a.register("two", "/o", 0, 64)
    assert str(refused.value) == (
        "cannot register shared memory region 'two': 1 regions are mapped, the most this server maps "
        "(max_shm_regions=1)"
    )


def test_a_first_use_past_the_workers_limit_says_it_could_not_map(objects: Path, worker: Any) -> None:
    a, b = worker(), worker(max_regions=1)
    (objects / "o").write_bytes(bytes(64))
    a.register("x", "/o", 0, 64)
    a.register("y", "/o", 0, 64)
    assert b.lookup("x") is not None
    with pytest.raises(
        SharedMemoryLimit, match=r"^cannot map shared memory region 'y': 1 regions are mapped"
    ):
        b.lookup("y")


def test_out_of_descriptors_says_which_memory_and_why(
    objects: Path, worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading the book (Status) and opening a registered object (a first use) alike."""
    a = worker()
    (objects / "o").write_bytes(bytes(64))
    a.register("r", "/o", 0, 64)
    entry = a._book.get("r")
    expected = (
        "system shared memory: the server has no file descriptor left (its open-file limit, ulimit -n; "
        "its registrations are files the workers share)"
    )

    def no_descriptor(*args: object, **kwargs: object) -> Any:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(Path, "read_text", no_descriptor)
    with pytest.raises(SharedMemoryLimit) as refused:
        a.status("")
    assert str(refused.value) == expected
    monkeypatch.undo()
    monkeypatch.setattr(os, "open", no_descriptor)
    with pytest.raises(SharedMemoryLimit) as refused:
        adopt(entry, objects)
    assert str(refused.value) == expected


def test_an_unknown_names_status_is_tritons_not_found(worker: Any) -> None:
    with pytest.raises(RegionNotFound) as missing:
        worker().status("nope")
    assert str(missing.value) == "Unable to find system shared memory region: 'nope'"


def test_unregistering_one_name_leaves_the_others_and_an_unknown_one_moves_nothing(
    objects: Path, worker: Any
) -> None:
    a, b = worker(), worker()
    (objects / "o").write_bytes(bytes(64))
    a.register("x", "/o", 0, 64)
    a.register("y", "/o", 0, 64)
    held = b.lookup("y")
    before = a._book.generation()
    b.unregister("unknown")
    assert a._book.generation() == before  # nothing removed: no worker need look again
    b.unregister("x")
    assert a._book.generation() == before + 1
    assert [r.name for r in a.status("")] == ["y"]
    assert b.lookup("y") is held  # b's mapping of y stays, with no new open


def test_a_mapping_is_let_go_as_soon_as_its_own_worker_unregisters_it(objects: Path, worker: Any) -> None:
    a = worker()
    (objects / "o").write_bytes(bytes(64))
    a.register("r", "/o", 0, 64)
    a.register("s", "/o", 0, 64)
    a.unregister("r")
    gc.collect()
    assert a.live_mappings == (1, 64)  # at once, not at the watch's next check
    a.unregister("")
    gc.collect()
    assert a.live_mappings == (0, 0)


def test_a_lookup_after_the_counter_moved_reads_no_entry_once_checked(
    objects: Path, worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An Unregister of another name: the next lookup checks the mappings once; the one after it is
    a read of the counter again, no book file."""
    a, b = worker(), worker()
    (objects / "o").write_bytes(bytes(64))
    a.register("kept", "/o", 0, 64)
    a.register("other", "/o", 0, 64)
    held = b.lookup("kept")
    a.unregister("other")
    assert b.lookup("kept") is held
    read: list[str] = []
    real_get = b._book.get
    monkeypatch.setattr(b._book, "get", lambda name: read.append(name) or real_get(name))
    assert b.lookup("kept") is held and read == []


def test_names_with_any_code_point_are_booked(objects: Path, worker: Any) -> None:
    """A lone surrogate (a name Python decoded with surrogateescape) still has its own entry."""
    a, b = worker(), worker()
    (objects / "o").write_bytes(b"\7" * 64)
    a.register("in\udcff", "/o", 0, 64)
    assert bytes(b.lookup("in\udcff").read(0, 1)) == b"\7"


def test_a_region_mapped_from_the_key_has_a_nonblocking_close_on_exec_descriptor(
    objects: Path, worker: Any
) -> None:
    """The registering worker gone (its descriptor unreachable), the key is opened: neither a FIFO
    under it waits, nor a server's child inherits the client's memory."""
    a, b = worker(), worker()
    (objects / "o").write_bytes(b"\3" * 64)
    a.register("r", "/o", 0, 64)
    entry = a._book.get("r")
    a._book.remove("r")
    a._book.add(dataclasses.replace(entry, pid=2**22 + 1), 8, 1 << 20)  # no such process
    region = b.lookup("r")
    assert bytes(region.read(0, 1)) == b"\3"
    assert fcntl.fcntl(region.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    assert fcntl.fcntl(region.fd, fcntl.F_GETFL) & os.O_NONBLOCK


def test_two_requests_mapping_one_region_at_once_share_one_mapping(
    objects: Path, worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second to map finds the first's mapping: both requests get it, one mapping is counted,
    and the second's descriptor is closed."""
    a, b = worker(), worker()
    (objects / "o").write_bytes(bytes(64))
    a.register("r", "/o", 0, 64)
    adopted = shm_workers.adopt
    inner: list[Any] = []

    def and_another_request_meanwhile(*args: Any) -> Any:
        region = adopted(*args)
        if not inner:
            inner.append(None)
            inner[0] = b.lookup("r")
        return region

    c = worker()
    # Descriptors on the region's own file, not all of the process's: a collection closing an
    # earlier test's files in this process moved a count of all of them (a CI run, 2026-12-05).
    fds = _open_on(objects / "o")
    alone = c.lookup("r")  # what one mapping holds open (its descriptor, its mmap's)
    one_mapping = _open_on(objects / "o") - fds
    monkeypatch.setattr(shm_workers, "adopt", and_another_request_meanwhile)
    outer = b.lookup("r")
    assert outer is inner[0]
    gc.collect()
    assert one_mapping >= 1
    assert b.live_mappings == (1, 64) and _open_on(objects / "o") == fds + 2 * one_mapping
    del alone


def _open_on(path: Path) -> int:
    """How many of this process's descriptors are open on `path`."""
    target, found = str(path.resolve()), 0
    for fd in Path("/proc/self/fd").iterdir():
        try:
            found += os.readlink(fd) == target
        except OSError:
            continue  # (the listing's own descriptor, closed meanwhile)
    return found


def test_a_register_that_fails_after_keeping_its_mapping_leaves_nothing(
    objects: Path, worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check after the mapping is kept fails (out of descriptors reading the book): the entry
    and the mapping go, and a retry is no ALREADY_EXISTS."""
    a = worker()
    (objects / "o").write_bytes(bytes(64))
    monkeypatch.setattr(a, "_still_booked", lambda *args: (_ for _ in ()).throw(OSError("injected")))
    with pytest.raises(OSError, match="injected"):
        a.register("r", "/o", 0, 64)
    monkeypatch.undo()
    gc.collect()
    assert a.status("") == [] and a.live_mappings == (0, 0)
    with pytest.raises(RegionNotFound):
        a.lookup("r")
    a.register("r", "/o", 0, 64)


def test_a_cuda_region_booked_while_a_system_one_of_its_name_is_opened_wins(
    objects: Path, worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The book checks the other kind's names under its lock too: the system Register that checked
    the name before the CUDA one was booked is refused, and leaves nothing."""
    a = worker()
    (objects / "o").write_bytes(bytes(64))
    cuda_names: set[str] = set()
    a.device_regions = SimpleNamespace(has=lambda name: name in cuda_names, mapped=lambda name: False)
    opened = shm_workers.open_region

    def cuda_registered_meanwhile(*args: Any) -> Any:
        region = opened(*args)
        cuda_names.add("same")
        return region

    monkeypatch.setattr(shm_workers, "open_region", cuda_registered_meanwhile)
    with pytest.raises(RegionExists, match="'same' already in manager"):
        a.register("same", "/o", 0, 64)
    gc.collect()
    assert a.status("") == [] and a.live_mappings == (0, 0)


class _Told:
    """Waits for a log line of `logger` (a Condition each record notifies)."""

    def __init__(self, logger: str) -> None:
        self.lines: list[str] = []
        self.cond = threading.Condition()
        outer = self

        class Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                with outer.cond:
                    outer.lines.append(record.getMessage())
                    outer.cond.notify_all()

        self.handler = Handler()
        self.logger = logging.getLogger(logger)
        self.logger.addHandler(self.handler)

    def wait(self) -> list[str]:
        with self.cond:
            assert self.cond.wait_for(lambda: bool(self.lines), timeout=30)
        self.logger.removeHandler(self.handler)
        return self.lines


def test_a_failed_check_of_the_book_is_logged_as_the_system_regions(
    worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    told = _Told("server.periodic")
    a = worker()
    monkeypatch.setattr(a, "_refresh", lambda: (_ for _ in ()).throw(OSError("injected")))
    assert told.wait()[0] == "system shared memory: the book's check failed, tried again in 0.5 s: injected"


def test_close_gives_up_on_a_stuck_check_within_its_bound(
    share: Path, objects: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A check stuck (a hung file system): the worker's shutdown waits 5 checks' time, not for ever."""
    monkeypatch.setattr(booked_mappings, "REFRESH_S", 0.01)
    registry = WorkersRegistry(
        system_book(share), allowed=True, max_regions=8, max_bytes=64, directory=objects
    )
    stuck, release = threading.Event(), threading.Event()

    def hang() -> None:
        stuck.set()
        release.wait(60)

    monkeypatch.setattr(registry, "_refresh", hang)
    assert stuck.wait(30)
    began = time.monotonic()
    registry.close()
    assert time.monotonic() - began < 10
    release.set()


def test_the_settings_make_the_workers_registry_only_under_workers_with_shm_allowed(share: Path) -> None:
    def settings(shared: Path | None, allowed: bool) -> Any:
        return SimpleNamespace(
            rollout_share_dir=shared, allow_client_shm=allowed, max_shm_regions=3, max_shm_bytes=4096
        )

    for shared, allowed in ((None, True), (None, False), (share, False)):
        plain = system_registry(settings(shared, allowed))
        assert type(plain) is SharedMemoryRegistry
        assert (plain.allowed, plain.max_regions, plain.max_bytes) == (allowed, 3, 4096)
    booked = system_registry(settings(share, True))
    try:
        assert isinstance(booked, WorkersRegistry)
        assert (booked.allowed, booked.max_regions, booked.max_bytes) == (True, 3, 4096)
        assert isinstance(booked._book, ShmBook) and (share / "shm").is_dir()
    finally:
        booked.close()
