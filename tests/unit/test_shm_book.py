"""System shared-memory regions under --workers: two registries over one book (shm_book.py), as two
workers' processes see them, without a server (objects and the share directory in temp dirs)."""

from __future__ import annotations

import dataclasses
import errno
import gc
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from server.errors import InvalidRequest, RegionExists, RegionNotFound, SharedMemoryLimit
from server.protocol.shared_memory import SharedMemoryRegistry
from server.protocol.shm_book import ShmBook, adopt, system_book
from server.protocol.shm_regions import RegionGone
from server.protocol.shm_workers import REFRESH_S, WorkersRegistry

Worker = Callable[..., SharedMemoryRegistry]


@pytest.fixture
def objects(tmp_path: Path) -> Path:
    """Where the clients' shm objects are (as /dev/shm)."""
    (tmp_path / "objects").mkdir()
    return tmp_path / "objects"


@pytest.fixture
def worker(objects: Path, tmp_path: Path) -> Iterator[Worker]:
    """Makes one worker's registry: its own book object (its own mapping of the counter) on one
    share directory; every one closed after the test (their watch threads end)."""
    share = tmp_path / "share"
    share.mkdir()
    made: list[SharedMemoryRegistry] = []

    def make(**limits: int) -> SharedMemoryRegistry:
        registry = WorkersRegistry(
            system_book(share),
            allowed=True,
            max_regions=limits.get("max_regions", 8),
            max_bytes=limits.get("max_bytes", 1 << 20),
            directory=objects,
        )
        made.append(registry)
        return registry

    yield make
    for registry in made:
        registry.close()


def test_a_region_registered_through_one_worker_is_read_through_another(
    objects: Path, worker: Worker
) -> None:
    a, b = worker(), worker()
    (objects / "o").write_bytes(bytes(range(256)) * 32)
    a.register("in", "/o", 4100, 100)
    assert [(r.name, r.key, r.offset, r.byte_size) for r in b.status("")] == [("in", "/o", 4100, 100)]
    assert b.status("in")[0].key == "/o"
    assert bytes(b.lookup("in").read(0, 4)) == bytes([4100 % 256 + i for i in range(4)])
    assert b.live_mappings[0] == 1  # mapped there at its first use
    with pytest.raises(RegionExists, match="already in manager"):
        b.register("in", "/o", 0, 8)  # one name across the workers
    assert b.has("in") and a.has("in")


def test_unregister_through_one_worker_ends_the_name_in_every_worker(objects: Path, worker: Worker) -> None:
    a, b = worker(), worker()
    (objects / "o").write_bytes(b"\1" * 64)
    (objects / "p").write_bytes(b"\2" * 64)
    a.register("r", "/o", 0, 64)
    held = b.lookup("r")  # a request in flight on worker b
    mapping = weakref.ref(held.mapping)
    a.unregister("r")
    with pytest.raises(RegionNotFound, match="'r'"):
        b.lookup("r")
    with pytest.raises(RegionNotFound):
        b.status("r")
    assert bytes(held.read(0, 2)) == b"\1\1"  # the request in flight keeps its region
    del held
    gc.collect()
    assert mapping() is None and b.live_mappings == (0, 0)
    # Registered again, on another object: worker b reads the new one, not a mapping of the old.
    a.register("r", "/p", 0, 64)
    assert bytes(b.lookup("r").read(0, 2)) == b"\2\2"


def test_a_stale_mapping_gives_way_to_the_names_new_registration(objects: Path, worker: Worker) -> None:
    a, b = worker(), worker()
    (objects / "o").write_bytes(b"\1" * 64)
    (objects / "p").write_bytes(b"\2" * 64)
    a.register("r", "/o", 0, 64)
    assert bytes(a.lookup("r").read(0, 1)) == b"\1"
    b.unregister("r")
    a.register("r", "/p", 0, 64)  # a's old mapping of "r" is not taken for a registration
    assert bytes(a.lookup("r").read(0, 1)) == b"\2"
    b.unregister("r")
    b.register("r", "/o", 0, 64)  # through b: a's mapping of /p is dropped at its next lookup
    assert bytes(a.lookup("r").read(0, 1)) == b"\1"
    b.unregister("")
    assert a.status("") == [] and b.status("") == []
    with pytest.raises(RegionNotFound):
        a.lookup("r")


def test_the_limits_are_the_servers_not_each_workers(objects: Path, worker: Worker) -> None:
    a, b = worker(max_regions=2), worker(max_regions=2)
    (objects / "o").write_bytes(bytes(3 * 4096))
    a.register("x", "/o", 0, 64)
    b.register("y", "/o", 0, 64)
    with pytest.raises(SharedMemoryLimit, match="max_shm_regions"):
        a.register("z", "/o", 0, 64)
    assert [r.name for r in b.status("")] == ["x", "y"]
    c, d = worker(max_bytes=8192), worker(max_bytes=8192)
    c.unregister("")
    c.register("x", "/o", 0, 4096)
    with pytest.raises(SharedMemoryLimit, match="max_shm_bytes is 8192"):
        d.register("y", "/o", 0, 8192)
    assert [r.name for r in d.status("")] == ["x"]  # the refused one left no entry


def test_one_name_registered_at_once_through_many_threads_is_registered_once(
    objects: Path,
    worker: Worker,
) -> None:
    (objects / "o").write_bytes(bytes(64))
    workers = [worker() for _ in range(8)]
    outcomes: list[str] = []
    start = threading.Barrier(len(workers))

    def register(shm: SharedMemoryRegistry) -> None:
        start.wait()
        try:
            shm.register("same", "/o", 0, 64)
            outcomes.append("ok")
        except RegionExists:
            outcomes.append("exists")

    threads = [threading.Thread(target=register, args=(shm,)) for shm in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["exists"] * 7 + ["ok"]
    assert [r.name for r in workers[0].status("")] == ["same"]


def test_a_region_is_the_object_registered_whatever_its_key_names_later(
    objects: Path, worker: Worker
) -> None:
    """As in one process (and Triton): Register binds the object, so the other worker reads it after
    the client unlinked it, or put another object under its key (it had opened the key again:
    'no such object', or the new object's data, only through the worker that had not registered)."""
    a, b, c = worker(), worker(), worker()
    (objects / "o").write_bytes(b"\1" * 64)
    a.register("r", "/o", 0, 64)
    (objects / "o").unlink()
    assert bytes(b.lookup("r").read(0, 2)) == b"\1\1"
    (objects / "o").write_bytes(b"\2" * 64)  # a new object under the same key
    assert bytes(c.lookup("r").read(0, 2)) == b"\1\1"


def test_a_worker_that_cannot_reach_the_registering_ones_descriptor_uses_the_key_if_unchanged(
    objects: Path, worker: Worker
) -> None:
    a = worker()
    (objects / "o").write_bytes(b"\1" * 64)
    a.register("r", "/o", 0, 64)
    book = system_book(objects.parent / "share")
    entry = book.get("r")
    assert entry is not None
    gone = dataclasses.replace(entry, pid=2**22 + 1)  # no such process: /proc/<pid>/fd cannot be opened
    assert bytes(adopt(gone, objects).read(0, 1)) == b"\1"
    (objects / "o").unlink()
    (objects / "o").write_bytes(b"\2" * 64)
    with pytest.raises(InvalidRequest, match="'/o' was removed or replaced after it was registered"):
        adopt(gone, objects)
    book.close()


def test_a_truncated_object_is_refused_through_the_other_worker_as_through_its_own(
    objects: Path, worker: Worker
) -> None:
    a, b = worker(), worker()
    (objects / "o").write_bytes(bytes(768))
    a.register("r", "/o", 0, 768)
    (objects / "o").write_bytes(bytes(100))  # truncated after Register
    with pytest.raises(RegionGone, match="'/o' is now 100 bytes, less than the registered offset 0"):
        b.lookup("r")
    with pytest.raises(RegionGone, match="is now 100 bytes"):
        a.lookup("r").check_size()


def _wait_for_the_watch(registry: WorkersRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    """Until `registry`'s watch thread has let go of every mapping: checked after each of its checks
    (a Condition it notifies), at most 30 of them; what a request holds goes with a collection."""
    refreshed = threading.Condition()
    checked = WorkersRegistry._refresh  # (the test's own, where it set one)

    def and_tell(self: WorkersRegistry) -> None:
        try:
            checked(self)
        finally:
            if self is registry:
                with refreshed:
                    refreshed.notify_all()

    def released() -> bool:
        gc.collect()
        return registry.live_mappings == (0, 0)

    monkeypatch.setattr(WorkersRegistry, "_refresh", and_tell)
    with refreshed:
        refreshed.wait_for(released, timeout=30 * REFRESH_S)


def test_a_worker_lets_go_of_a_region_unregistered_elsewhere_without_a_request(
    objects: Path, worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its watch (REFRESH_S): the mapping had stayed, pages and descriptors, past the server's limits,
    until that worker's next shared-memory request (a tester's)."""
    a, b = worker(), worker()
    (objects / "o").write_bytes(bytes(4096))
    a.register("r", "/o", 0, 4096)
    b.lookup("r")
    assert b.live_mappings == (1, 4096)
    a.unregister("r")
    _wait_for_the_watch(b, monkeypatch)
    assert b.live_mappings == (0, 0)


def test_a_lookup_that_maps_the_entry_between_its_add_and_the_register_end_is_no_conflict(
    objects: Path, worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request of the same worker naming the region as it is being registered maps the new entry
    first: the Register then found its own entry mapped (it had answered ALREADY_EXISTS and
    removed the entry: a name nobody could use)."""
    a = worker()
    (objects / "o").write_bytes(b"\1" * 64)
    added = ShmBook.add

    def add_then_lookup(book: ShmBook, *args: object, **kwargs: object) -> None:
        added(book, *args, **kwargs)  # type: ignore[arg-type]
        a.lookup("r")  # the request in between

    monkeypatch.setattr(ShmBook, "add", add_then_lookup)
    a.register("r", "/o", 0, 64)
    monkeypatch.undo()
    assert [r.name for r in a.status("")] == ["r"]
    assert bytes(a.lookup("r").read(0, 1)) == b"\1"
    # The Register kept its own mapping, whose descriptor the entry names: another worker still
    # reads the object after the client unlinked it (a reviewer's: it had closed that one).
    (objects / "o").unlink()
    assert bytes(worker().lookup("r").read(0, 1)) == b"\1"


def test_an_unregister_elsewhere_during_a_register_leaves_no_mapping_behind(
    objects: Path, worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other worker's Unregister lands between the Register's entry and its mapping: the
    Register is answered (it came first), and no request of either worker reads the region after.
    (The mapping had been added after the refresh that saw the Unregister: the old object served for
    good by that worker, a tester's 189 of 9,606 rounds.)"""
    a, b = worker(), worker()
    (objects / "o").write_bytes(b"\1" * 64)
    (objects / "p").write_bytes(b"\2" * 64)
    added = ShmBook.add

    def add_then_unregister_elsewhere(book: ShmBook, *args: object, **kwargs: object) -> None:
        added(book, *args, **kwargs)  # type: ignore[arg-type]
        b.unregister("x")

    monkeypatch.setattr(ShmBook, "add", add_then_unregister_elsewhere)
    a.register("x", "/o", 0, 64)
    monkeypatch.undo()
    with pytest.raises(RegionNotFound):
        a.lookup("x")
    b.register("x", "/p", 0, 64)
    assert bytes(a.lookup("x").read(0, 1)) == b"\2"  # the new registration, not a kept /o


def test_an_unregister_during_a_workers_first_mapping_leaves_no_mapping_behind(
    objects: Path, worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same between a worker reading the entry and adding its mapping (a lookup)."""
    import server.protocol.shm_workers as shm_workers

    a, b = worker(), worker()
    (objects / "o").write_bytes(b"\1" * 64)
    (objects / "p").write_bytes(b"\2" * 64)
    b.register("x", "/o", 0, 64)
    adopted = shm_workers.adopt

    def adopt_then_unregister(*args: object) -> object:
        region = adopted(*args)  # type: ignore[arg-type]
        b.unregister("x")
        a._refresh()  # the watch thread's turn, in between
        return region

    monkeypatch.setattr(shm_workers, "adopt", adopt_then_unregister)
    with pytest.raises(RegionNotFound):
        a.lookup("x")
    monkeypatch.undo()
    b.register("x", "/p", 0, 64)
    assert bytes(a.lookup("x").read(0, 1)) == b"\2"


def _open_paths() -> list[str]:
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            found.append(os.readlink(fd))
        except OSError:
            continue  # (the listing's own descriptor, closed meanwhile)
    return found


def test_a_register_that_fails_after_its_entry_leaves_nothing_and_not_the_names_next_entry(
    objects: Path, worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error between the entry and the mapping (out of descriptors reading the book, say): the
    Register's own entry removed, not the name's newer one another worker registered meanwhile, and
    its descriptor closed (a reviewer's: the entry stayed, ALREADY_EXISTS at a retry, the fd leaked)."""
    a, b = worker(), worker()
    (objects / "o").write_bytes(b"\1" * 64)
    (objects / "p").write_bytes(b"\2" * 64)

    def elsewhere_then_fail() -> None:
        b.unregister("r")
        b.register("r", "/p", 0, 64)
        raise OSError("injected")

    monkeypatch.setattr(a, "_refresh", elsewhere_then_fail)
    with pytest.raises(OSError, match="injected"):
        a.register("r", "/o", 0, 64)
    monkeypatch.undo()
    assert [(r.name, r.key) for r in a.status("")] == [("r", "/p")]  # b's, kept
    assert str(objects / "o") not in _open_paths()
    monkeypatch.setattr(a, "_refresh", lambda: (_ for _ in ()).throw(OSError("injected")))
    with pytest.raises(OSError, match="injected"):
        a.register("s", "/o", 0, 64)
    monkeypatch.undo()
    assert [r.name for r in b.status("")] == ["r"] and str(objects / "o") not in _open_paths()
    a.register("s", "/o", 0, 64)  # no ALREADY_EXISTS left behind


def test_out_of_descriptors_reading_the_book_is_resource_exhausted(
    objects: Path, worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = worker()
    (objects / "o").write_bytes(bytes(64))
    a.register("r", "/o", 0, 64)

    def no_descriptor(self: Path, *args: object, **kwargs: object) -> str:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(Path, "read_text", no_descriptor)
    with pytest.raises(SharedMemoryLimit, match="no file descriptor left"):
        a.status("")


def test_a_failed_check_does_not_end_the_watch(
    objects: Path, worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = worker(), worker()
    (objects / "o").write_bytes(bytes(4096))
    a.register("r", "/o", 0, 4096)
    b.lookup("r")
    checked = WorkersRegistry._refresh
    failures = [OSError("injected")]

    def fail_once(self: WorkersRegistry) -> None:
        if self is b and failures:
            raise failures.pop()
        checked(self)

    monkeypatch.setattr(WorkersRegistry, "_refresh", fail_once)
    a.unregister("r")
    _wait_for_the_watch(b, monkeypatch)
    assert not failures and b.live_mappings == (0, 0)
