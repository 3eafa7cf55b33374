"""CUDA shared-memory regions under --workers: each worker's registries (system and CUDA) over one
book (cuda_shm_workers.py, shm_book.py), as two workers' processes see them, without a server or a
GPU (tests/support/fake_cudart.py: its "device" memory is host memory, and it counts the opens of a
handle as CUDA does). The same through a real server and GPU: tests/integration/test_gpu.py."""

from __future__ import annotations

import errno
import gc
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from server.backends.cuda_shm import CudaRegion, NoCudaSharedMemory, cuda_shared_memory
from server.backends.cudart import CudaRuntime
from server.errors import InvalidRequest, RegionExists, RegionNotFound, SharedMemoryLimit
from server.protocol import cuda_shm_workers
from server.protocol.cuda_shm_workers import KIND, CudaEntry, CudaWorkersRegistry, cuda_book_registry
from server.protocol.shm_book import REFRESH_S, ShmBook, system_book
from server.protocol.shm_workers import WorkersRegistry
from tests.support.fake_cudart import FakeCudart

GPU_PROVIDERS = ["CUDAExecutionProvider", "CPUExecutionProvider"]


@dataclass
class Worker:
    """One worker's two registries, wired as the app wires them."""

    system: WorkersRegistry
    cuda: CudaWorkersRegistry


@pytest.fixture
def lib() -> FakeCudart:
    return FakeCudart(devices=2)


@pytest.fixture
def workers(lib: FakeCudart, tmp_path: Path) -> Iterator[list[Worker]]:
    """Two workers on one share directory (regions limited to 3 and 256 bytes, of each kind)."""
    share = tmp_path / "share"
    share.mkdir()
    (tmp_path / "objects").mkdir()
    made = []
    for _ in range(2):
        system = WorkersRegistry(
            system_book(share), allowed=True, max_regions=3, max_bytes=1 << 20, directory=tmp_path / "objects"
        )
        book = ShmBook(share, CudaEntry, KIND)
        cuda = CudaWorkersRegistry(
            book, CudaRuntime(lib), lib.devices, max_regions=3, max_bytes=256, taken=system.has
        )
        system.device_regions = cuda
        made.append(Worker(system, cuda))
    yield made
    for worker in made:
        worker.cuda.close()
        worker.system.close()


def mapped(region: CudaRegion | None) -> CudaRegion:
    assert region is not None
    return region


def test_a_region_registered_through_one_worker_is_read_and_written_through_another(
    lib: FakeCudart, workers: list[Worker]
) -> None:
    a, b = workers
    handle, address = lib.export(64, fill=np.arange(16, dtype=np.float32).tobytes())
    a.cuda.register("gpu", handle, 1, 64)
    assert [(r.name, r.device_id, r.byte_size) for r in b.cuda.status("")] == [("gpu", 1, 64)]
    assert b.cuda.has("gpu") and lib.opens == {address: 1}  # mapped by the registering worker only
    region = mapped(b.cuda.lookup("gpu"))  # b maps it for its first request naming it
    assert region.read(8, 8).view(np.float32).tolist() == [2.0, 3.0]
    region.write(60, np.frombuffer(b"\x01\x02\x03\x04", np.uint8))
    assert lib.read(address + 60, 4) == b"\x01\x02\x03\x04"
    assert lib.opens == {address: 2} and lib.open == {address: 1}  # on the GPU registered
    assert b.cuda.lookup("gpu") is region  # mapped once per worker
    assert b.system.lookup("gpu") is region  # what a request naming it resolves
    assert b.cuda.live_mappings == (1, 64)


def test_a_name_is_one_regions_across_workers_and_kinds(
    lib: FakeCudart, workers: list[Worker], tmp_path: Path
) -> None:
    a, b = workers
    a.cuda.register("gpu", lib.export(8)[0], 0, 8)
    with pytest.raises(RegionExists, match="'gpu' already in manager"):
        b.cuda.register("gpu", lib.export(8)[0], 0, 8)
    with pytest.raises(RegionExists, match="'gpu' already in manager"):
        b.system.register("gpu", "any-key", 0, 8)  # refused before any object is opened
    (tmp_path / "objects" / "o").write_bytes(bytes(4096))
    a.system.register("sys", "/o", 0, 4096)
    handle, address = lib.export(8)
    with pytest.raises(RegionExists, match="'sys' already in manager"):
        b.cuda.register("sys", handle, 0, 8)
    assert address not in lib.opens and b.cuda.live_mappings == (0, 0)  # refused before it was mapped


def test_the_limits_are_the_servers_not_each_workers(lib: FakeCudart, workers: list[Worker]) -> None:
    a, b = workers
    a.cuda.register("one", lib.export(200)[0], 0, 200)
    handle, address = lib.export(57)
    with pytest.raises(SharedMemoryLimit, match="of 57 bytes: 200 bytes are mapped and max_shm_bytes is 256"):
        b.cuda.register("two", handle, 0, 57)
    assert address not in lib.opens and b.cuda.live_mappings == (0, 0)  # its mapping closed at once
    assert [r.name for r in a.cuda.status("")] == ["one"]  # and nothing booked
    b.cuda.register("two", lib.export(56)[0], 0, 56)
    b.cuda.unregister("one")
    for name in ("three", "four"):
        a.cuda.register(name, lib.export(1)[0], 0, 1)
    with pytest.raises(SharedMemoryLimit, match=r"3 CUDA regions are mapped, .*max_shm_regions=3"):
        b.cuda.register("five", lib.export(1)[0], 0, 1)


def test_unregister_through_one_worker_ends_the_region_in_every_worker(
    lib: FakeCudart, workers: list[Worker]
) -> None:
    a, b = workers
    handle, address = lib.export(16, fill=b"held")
    a.cuda.register("gpu", handle, 0, 16)
    held = mapped(b.cuda.lookup("gpu"))  # as a request of b that resolved it holds it
    a.cuda.unregister("gpu")
    assert b.cuda.lookup("gpu") is None and a.cuda.lookup("gpu") is None
    with pytest.raises(RegionNotFound, match="Unable to find shared memory region: 'gpu'"):
        b.system.lookup("gpu")
    with pytest.raises(RegionNotFound, match="Unable to find cuda shared memory region: 'gpu'"):
        b.cuda.status("gpu")
    assert held.read(0, 4).tobytes() == b"held"  # still mapped for the request holding it
    assert lib.opens == {address: 1} and b.cuda.live_mappings == (1, 16)
    del held
    gc.collect()
    assert lib.opens == {} and lib.closed == [address]
    assert a.cuda.live_mappings == b.cuda.live_mappings == (0, 0)


def test_a_name_registered_again_is_the_new_region_in_a_worker_that_mapped_the_old(
    lib: FakeCudart, workers: list[Worker]
) -> None:
    a, b = workers
    old, _ = lib.export(8, fill=b"old")
    a.cuda.register("gpu", old, 0, 8)
    assert mapped(b.cuda.lookup("gpu")).read(0, 3).tobytes() == b"old"
    a.cuda.unregister("gpu")
    new, _ = lib.export(8, fill=b"new")
    a.cuda.register("gpu", new, 0, 8)
    assert mapped(b.cuda.lookup("gpu")).read(0, 3).tobytes() == b"new"
    a.cuda.unregister("gpu")  # and through the worker holding a stale mapping of the name
    b.cuda.register("gpu", old, 0, 8)
    assert mapped(a.cuda.lookup("gpu")).read(0, 3).tobytes() == b"old"


def test_a_handle_another_worker_cannot_open_is_the_requests_error_naming_the_region(
    lib: FakeCudart, workers: list[Worker]
) -> None:
    a, b = workers
    handle, _ = lib.export(8)
    a.cuda.register("gpu", handle, 0, 8)
    del lib.exported[handle]  # as a client that freed its buffer after registering it
    with pytest.raises(
        InvalidRequest, match=r"cannot map CUDA shared memory region 'gpu': cannot open its CUDA IPC handle"
    ):
        b.system.lookup("gpu")
    assert b.cuda.live_mappings == (0, 0)  # nothing counted for the failure
    assert a.cuda.lookup("gpu") is not None  # the registering worker's mapping is unaffected


def test_a_worker_that_closes_leaves_the_servers_regions_to_the_others(
    lib: FakeCudart, workers: list[Worker]
) -> None:
    a, b = workers
    a.cuda.register("gpu", lib.export(8, fill=b"kept")[0], 0, 8)
    a.cuda.close()
    assert [r.name for r in b.cuda.status("")] == ["gpu"]
    assert mapped(b.cuda.lookup("gpu")).read(0, 4).tobytes() == b"kept"


def test_two_requests_mapping_one_region_at_once_keep_one_mapping(
    lib: FakeCudart, workers: list[Worker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second to map finds the first's mapping and lets its own go: CUDA counts the two opens
    of the handle in one process, so each is closed."""
    a, b = workers
    handle, address = lib.export(8)
    a.cuda.register("gpu", handle, 0, 8)
    opened = CudaWorkersRegistry._open
    inner: list[CudaRegion | None] = []

    def and_another_request_meanwhile(
        self: CudaWorkersRegistry, *args: object, **kwargs: object
    ) -> CudaRegion:
        region = opened(self, *args, **kwargs)  # type: ignore[arg-type]
        if self is b.cuda and not inner:
            inner.append(None)
            inner[0] = self.lookup("gpu")
        return region

    monkeypatch.setattr(CudaWorkersRegistry, "_open", and_another_request_meanwhile)
    outer = b.cuda.lookup("gpu")
    assert outer is not None and outer is inner[0]
    gc.collect()
    assert lib.opens == {address: 2} and b.cuda.live_mappings == (1, 8)  # a's, and b's one


def test_a_worker_lets_go_of_a_region_unregistered_elsewhere_without_a_request(
    lib: FakeCudart, workers: list[Worker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its watch (REFRESH_S) drops the mapping; the device memory's mapping closes with it."""
    a, b = workers
    handle, address = lib.export(8)
    a.cuda.register("gpu", handle, 0, 8)
    assert b.cuda.lookup("gpu") is not None
    refreshed = threading.Condition()
    checked = CudaWorkersRegistry._refresh

    def and_tell(self: CudaWorkersRegistry) -> None:
        try:
            checked(self)
        finally:
            if self is b.cuda:
                with refreshed:
                    refreshed.notify_all()

    def released() -> bool:
        gc.collect()
        return b.cuda.live_mappings == (0, 0)

    monkeypatch.setattr(CudaWorkersRegistry, "_refresh", and_tell)
    a.cuda.unregister("gpu")
    with refreshed:
        assert refreshed.wait_for(released, timeout=30 * REFRESH_S)
    assert address not in lib.opens


def test_the_server_picks_the_workers_registry_under_workers_only(lib: FakeCudart, tmp_path: Path) -> None:
    limits = {"max_regions": 2, "max_bytes": 64}
    assert cuda_book_registry(None, taken=lambda name: False, **limits) is None  # one process
    maker = cuda_book_registry(tmp_path, taken=lambda name: False, **limits)
    cuda = cuda_shared_memory(
        GPU_PROVIDERS, allowed=True, loader=lambda: CudaRuntime(lib), book_registry=maker
    )
    try:
        assert isinstance(cuda, cuda_shm_workers.CudaWorkersRegistry)
        assert cuda.max_regions == 2 and cuda.max_bytes == 64
    finally:
        cuda.close()
    refused = cuda_shared_memory(["CPUExecutionProvider"], allowed=True, book_registry=maker)
    assert isinstance(refused, NoCudaSharedMemory) and "needs a GPU" in refused.reason
    off = cuda_shared_memory(GPU_PROVIDERS, loader=lambda: CudaRuntime(lib), book_registry=maker)
    assert isinstance(off, NoCudaSharedMemory) and "--allow-client-shm" in off.reason


def test_a_region_unregistered_while_a_worker_maps_it_is_not_kept_there(
    lib: FakeCudart, workers: list[Worker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Unregister, and the watch's check after it, land between b reading the entry and b
    keeping its mapping: the check found nothing to drop, and no later one would."""
    a, b = workers
    a.cuda.register("gpu", lib.export(8)[0], 0, 8)
    opened = CudaWorkersRegistry._open

    def unregistered_meanwhile(self: CudaWorkersRegistry, *args: object, **kwargs: object) -> CudaRegion:
        region = opened(self, *args, **kwargs)  # type: ignore[arg-type]
        if self is b.cuda:
            a.cuda.unregister("gpu")
            b.cuda._refresh()  # as its watch would
        return region

    monkeypatch.setattr(CudaWorkersRegistry, "_open", unregistered_meanwhile)
    assert b.cuda.lookup("gpu") is None
    monkeypatch.undo()
    assert b.cuda.lookup("gpu") is None
    gc.collect()
    assert b.cuda.live_mappings == (0, 0)


def test_a_system_region_registered_while_a_cuda_one_of_its_name_is_opened_wins(
    lib: FakeCudart, workers: list[Worker], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Both kinds' names are checked in the book under one lock: the CUDA Register that checked the
    name before the system one was booked is refused when it books its own, and leaves nothing."""
    a, b = workers
    (tmp_path / "objects" / "o").write_bytes(bytes(4096))
    opened = CudaWorkersRegistry._open

    def system_registered_meanwhile(self: CudaWorkersRegistry, *args: object, **kwargs: object) -> CudaRegion:
        region = opened(self, *args, **kwargs)  # type: ignore[arg-type]
        a.system.register("same", "/o", 0, 4096)
        return region

    monkeypatch.setattr(CudaWorkersRegistry, "_open", system_registered_meanwhile)
    handle, address = lib.export(8)
    with pytest.raises(RegionExists, match="'same' already in manager"):
        b.cuda.register("same", handle, 0, 8)
    assert b.cuda.status("") == [] and address not in lib.opens and b.cuda.live_mappings == (0, 0)
    assert [r.name for r in b.system.status("")] == ["same"]


def test_a_name_booked_through_another_worker_is_refused_before_its_handle_is_opened(
    lib: FakeCudart, workers: list[Worker]
) -> None:
    """ALREADY_EXISTS as in one process (a reviewer's: a stale handle had answered INVALID_ARGUMENT,
    and opening it to refuse it could make a CUDA context in that worker)."""
    a, b = workers
    a.cuda.register("gpu", lib.export(8)[0], 0, 8)
    opens = lib.cudaIpcOpenMemHandle.calls
    for handle in (b"\xee" * 64, lib.export(8)[0]):  # one that does not open, and one that does
        with pytest.raises(RegionExists, match="'gpu' already in manager"):
            b.cuda.register("gpu", handle, 0, 8)
    assert lib.cudaIpcOpenMemHandle.calls == opens


def test_a_register_that_fails_after_booking_leaves_nothing(
    lib: FakeCudart, workers: list[Worker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the system registry's: here the check after the entry is booked (a read of the book) runs
    out of descriptors (a reviewer's: the entry and the mapping had stayed, and a retry was
    ALREADY_EXISTS)."""
    a, b = workers
    handle, address = lib.export(8)
    added = ShmBook.add
    booked: list[bool] = []

    def add_then_out_of_files(self: ShmBook[CudaEntry], *args: object, **kwargs: object) -> None:
        added(self, *args, **kwargs)  # type: ignore[arg-type]
        booked.append(True)

    read = Path.read_text

    def read_text(self: Path, *args: object, **kwargs: object) -> str:
        if booked and self.name.startswith(f"{KIND}-"):
            booked.clear()  # (once: descriptors were short for a moment)
            raise OSError(errno.EMFILE, "Too many open files")
        return read(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ShmBook, "add", add_then_out_of_files)
    monkeypatch.setattr(Path, "read_text", read_text)
    with pytest.raises(SharedMemoryLimit, match="CUDA shared memory: the server has no file descriptor left"):
        b.cuda.register("gpu", handle, 0, 8)
    monkeypatch.undo()
    gc.collect()
    assert a.cuda.status("") == b.cuda.status("") == []
    assert b.cuda.live_mappings == (0, 0) and address not in lib.opens
    b.cuda.register("gpu", handle, 0, 8)  # no ALREADY_EXISTS left behind


def test_a_request_naming_a_cuda_region_mapped_here_reads_no_system_entry(
    lib: FakeCudart, workers: list[Worker], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    a, b = workers
    a.cuda.register("gpu", lib.export(64)[0], 0, 64)
    first = b.system.lookup("gpu")  # b's first request: not a system region, then mapped as CUDA
    assert isinstance(first, CudaRegion)
    looked: list[str] = []
    real_get = b.system._book.get
    monkeypatch.setattr(b.system._book, "get", lambda name: looked.append(name) or real_get(name))
    assert b.system.lookup("gpu") is first and looked == []  # b's mapping: no system book file read
    # Unregistered through a and registered again as a system region: b's CUDA mapping is stale,
    # and the name is looked up as any other.
    a.cuda.unregister("gpu")
    (tmp_path / "objects" / "o").write_bytes(bytes(4096))
    a.system.register("gpu", "/o", 0, 4096)
    again = b.system.lookup("gpu")
    assert not isinstance(again, CudaRegion) and again.byte_size == 4096
