"""What the mutation run of the workers' CUDA shared memory (server/protocol/cuda_shm_workers.py,
with booked_mappings.py) found untested: the registering worker's own mapping across other names'
Unregisters, a Register that an Unregister elsewhere or a failure lands in, the registry the server
makes from its settings, and its watch's log line. Split from test_mutants_shm_workers.py (a
module's 400 lines); without a GPU (tests/support/fake_cudart.py); tests/MUTANTS.md lists them."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from server.backends.cuda_shm import CudaRegistry, NoCudaSharedMemory
from server.backends.cudart import CudaRuntime
from server.errors import RegionExists, SharedMemoryLimit
from server.protocol import cuda_shm_workers
from server.protocol.cuda_shm_workers import (
    KIND,
    CudaEntry,
    CudaWorkersRegistry,
    cuda_book_registry,
    cuda_registry,
)
from server.protocol.shm_book import ShmBook
from tests.support.fake_cudart import FakeCudart
from tests.unit.test_mutants_shm_workers import _Told

GPU = ["CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.fixture
def lib() -> FakeCudart:
    return FakeCudart(devices=2)


@pytest.fixture
def workers(lib: FakeCudart, tmp_path: Path) -> Iterator[list[CudaWorkersRegistry]]:
    made = [
        CudaWorkersRegistry(
            ShmBook(tmp_path, CudaEntry, KIND), CudaRuntime(lib), 2, max_regions=4, max_bytes=256
        )
        for _ in range(2)
    ]
    yield made
    for registry in made:
        registry.close()


def test_the_registering_workers_mapping_outlasts_other_names_unregisters(
    lib: FakeCudart, workers: list[CudaWorkersRegistry]
) -> None:
    """After an Unregister of another name (the counter moved), both workers' mappings of the
    region are kept: no handle is opened again."""
    a, b = workers
    a.register("gpu", lib.export(8, fill=b"mine")[0], 0, 8)
    a.register("other", lib.export(8)[0], 0, 8)
    held = b.lookup("gpu")
    assert held is not None
    opens = lib.cudaIpcOpenMemHandle.calls
    b.unregister("other")
    own = a.lookup("gpu")
    assert own is not None and own.read(0, 4).tobytes() == b"mine"
    assert b.lookup("gpu") is held
    assert lib.cudaIpcOpenMemHandle.calls == opens
    assert a.lookup("gpu") is own


def test_an_unregister_elsewhere_during_a_register_leaves_no_mapping_behind(
    lib: FakeCudart, workers: list[CudaWorkersRegistry], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other worker's Unregister lands between the Register's entry and its mapping: the
    Register is answered, and its mapping goes: the watch's check after the Unregister came
    before the mapping, so no later check would drop it."""
    a, b = workers
    added = ShmBook.add

    def add_then_unregister_elsewhere(book: ShmBook[CudaEntry], *args: Any, **kwargs: Any) -> None:
        added(book, *args, **kwargs)
        b.unregister("gpu")
        a._refresh()  # the watch thread's turn, in between: nothing mapped yet to drop

    monkeypatch.setattr(ShmBook, "add", add_then_unregister_elsewhere)
    handle, address = lib.export(8)
    a.register("gpu", handle, 0, 8)
    monkeypatch.undo()
    assert a.lookup("gpu") is None
    gc.collect()
    assert a.live_mappings == (0, 0) and address not in lib.opens


def test_a_register_that_fails_after_booking_keeps_the_names_newer_entry(
    lib: FakeCudart, workers: list[CudaWorkersRegistry], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its own entry only is removed: the name registered again through another worker meanwhile
    stays that worker's."""
    a, b = workers
    added = ShmBook.add
    newer, _ = lib.export(8, fill=b"new")

    def add_then_fail(book: ShmBook[CudaEntry], entry: CudaEntry, *args: Any, **kwargs: Any) -> None:
        added(book, entry, *args, **kwargs)
        if book is a._book:
            b.unregister("gpu")
            b.register("gpu", newer, 1, 8)
            raise OSError("injected")

    monkeypatch.setattr(ShmBook, "add", add_then_fail)
    with pytest.raises(OSError, match="injected"):
        a.register("gpu", lib.export(8)[0], 0, 8)
    monkeypatch.undo()
    assert [(r.name, r.device_id) for r in a.status("")] == [("gpu", 1)]
    region = a.lookup("gpu")
    assert region is not None and region.read(0, 3).tobytes() == b"new"


def test_the_book_registry_makes_working_registries_over_one_book(lib: FakeCudart, tmp_path: Path) -> None:
    """What cuda_book_registry hands the runtime makes each worker's registry: the same book, the
    runtime's GPUs, the server's limits, and a system region's name refused."""
    maker = cuda_book_registry(tmp_path, max_regions=2, max_bytes=64, taken=lambda name: name == "sys")
    assert maker is not None
    a, b = (maker(CudaRuntime(lib), 2) for _ in range(2))
    try:
        a.register("gpu", lib.export(16, fill=b"both")[0], 1, 16)
        region = b.lookup("gpu")
        assert region is not None and region.read(0, 4).tobytes() == b"both" and region.device_id == 1
        with pytest.raises(RegionExists, match="'sys' already in manager"):
            b.register("sys", lib.export(8)[0], 0, 8)
        with pytest.raises(SharedMemoryLimit) as refused:
            b.register("big", lib.export(64)[0], 0, 64)
        assert str(refused.value) == (
            "cannot register CUDA shared memory region 'big' of 64 bytes: 16 bytes are mapped and "
            "max_shm_bytes is 64"
        )
        b.register("two", lib.export(8)[0], 0, 8)
        with pytest.raises(SharedMemoryLimit) as refused:
            a.register("three", lib.export(8)[0], 0, 8)
        assert str(refused.value) == (
            "cannot register CUDA shared memory region 'three': 2 CUDA regions are mapped, the most this "
            "server maps (max_shm_regions=2)"
        )
        assert sorted(p.name.split("-")[0] for p in (tmp_path / "shm").glob("*-*")) == ["cuda", "cuda"]
    finally:
        a.close()
        b.close()


def test_the_servers_cuda_memory_follows_its_settings(
    lib: FakeCudart, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under --workers the book's registry, in one process the plain one, with the settings'
    limits and the system regions' names refused either way; refused when not allowed."""
    real = cuda_shm_workers.cuda_shared_memory
    monkeypatch.setattr(
        cuda_shm_workers,
        "cuda_shared_memory",
        lambda *args, **kwargs: real(*args, loader=lambda: CudaRuntime(lib), **kwargs),
    )

    def settings(shared: Path | None, allowed: bool = True) -> Any:
        return SimpleNamespace(
            rollout_share_dir=shared, allow_client_shm=allowed, max_shm_regions=3, max_shm_bytes=100
        )

    def taken(name: str) -> bool:
        return name == "sys"

    for shared, kind in ((tmp_path, CudaWorkersRegistry), (None, CudaRegistry)):
        cuda = cuda_registry(settings(shared), GPU, taken)
        try:
            assert type(cuda) is kind
            assert (cuda.max_regions, cuda.max_bytes) == (3, 100)
            with pytest.raises(RegionExists):
                cuda.register("sys", lib.export(8)[0], 0, 8)
        finally:
            cuda.close()
    for shared in (tmp_path, None):
        assert isinstance(cuda_registry(settings(shared, allowed=False), GPU, taken), NoCudaSharedMemory)


def test_a_failed_check_of_the_book_is_logged_as_the_cuda_regions(
    workers: list[CudaWorkersRegistry], monkeypatch: pytest.MonkeyPatch
) -> None:
    told = _Told("server.periodic")
    monkeypatch.setattr(workers[0], "_refresh", lambda: (_ for _ in ()).throw(OSError("injected")))
    assert told.wait()[0] == "CUDA shared memory: the book's check failed, tried again in 0.5 s: injected"
