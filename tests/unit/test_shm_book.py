"""System shared-memory regions under --workers: two registries over one book (shm_book.py), as two
workers' processes see them, without a server (objects and the share directory in temp dirs)."""

from __future__ import annotations

import gc
import threading
import weakref
from pathlib import Path

import pytest

from server.backends.cuda_shm import cuda_shared_memory
from server.errors import RegionExists, RegionNotFound, SharedMemoryLimit, Unsupported
from server.protocol.shared_memory import SharedMemoryRegistry
from server.protocol.shm_book import ShmBook


def worker(objects: Path, share: Path, **limits: int) -> SharedMemoryRegistry:
    """One worker's registry: its own book object (its own mapping of the counter) on `share`."""
    return SharedMemoryRegistry(
        allowed=True,
        max_regions=limits.get("max_regions", 8),
        max_bytes=limits.get("max_bytes", 1 << 20),
        directory=objects,
        book=ShmBook(share),
    )


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    objects, share = tmp_path / "objects", tmp_path / "share"
    objects.mkdir()
    share.mkdir()
    return objects, share


def test_a_region_registered_through_one_worker_is_read_through_another(dirs: tuple[Path, Path]) -> None:
    objects, share = dirs
    a, b = worker(objects, share), worker(objects, share)
    (objects / "o").write_bytes(bytes(range(256)) * 32)
    a.register("in", "/o", 4100, 100)
    assert [(r.name, r.key, r.offset, r.byte_size) for r in b.status("")] == [("in", "/o", 4100, 100)]
    assert b.status("in")[0].key == "/o"
    assert bytes(b.lookup("in").read(0, 4)) == bytes([4100 % 256 + i for i in range(4)])
    assert b.live_mappings[0] == 1  # mapped there at its first use
    with pytest.raises(RegionExists, match="already in manager"):
        b.register("in", "/o", 0, 8)  # one name across the workers
    assert b.has("in") and a.has("in")


def test_unregister_through_one_worker_ends_the_name_in_every_worker(dirs: tuple[Path, Path]) -> None:
    objects, share = dirs
    a, b = worker(objects, share), worker(objects, share)
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


def test_a_stale_mapping_gives_way_to_the_names_new_registration(dirs: tuple[Path, Path]) -> None:
    objects, share = dirs
    a, b = worker(objects, share), worker(objects, share)
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


def test_the_limits_are_the_servers_not_each_workers(dirs: tuple[Path, Path]) -> None:
    objects, share = dirs
    a, b = worker(objects, share, max_regions=2), worker(objects, share, max_regions=2)
    (objects / "o").write_bytes(bytes(3 * 4096))
    a.register("x", "/o", 0, 64)
    b.register("y", "/o", 0, 64)
    with pytest.raises(SharedMemoryLimit, match="max_shm_regions"):
        a.register("z", "/o", 0, 64)
    assert [r.name for r in b.status("")] == ["x", "y"]
    c, d = worker(objects, share, max_bytes=8192), worker(objects, share, max_bytes=8192)
    c.unregister("")
    c.register("x", "/o", 0, 4096)
    with pytest.raises(SharedMemoryLimit, match="max_shm_bytes is 8192"):
        d.register("y", "/o", 0, 8192)
    assert [r.name for r in d.status("")] == ["x"]  # the refused one left no entry


def test_one_name_registered_at_once_through_many_threads_is_registered_once(
    dirs: tuple[Path, Path],
) -> None:
    objects, share = dirs
    (objects / "o").write_bytes(bytes(64))
    workers = [worker(objects, share) for _ in range(8)]
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


def test_cuda_shared_memory_is_refused_under_workers_naming_why() -> None:
    cuda = cuda_shared_memory(["CUDAExecutionProvider"], allowed=True, one_process=False)
    with pytest.raises(Unsupported, match=r"one server process \(--workers 1\)"):
        cuda.register("g", b"", 0, 8)
    assert cuda.status("") == []
