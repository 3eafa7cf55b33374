"""What the mutation run of CUDA shared memory in one process (server/backends/cuda_shm.py) and of
the periodic daemon call (server/periodic.py) found untested: the addresses a region's copies get,
the refusals' wording whole, a Register of a name being mapped meanwhile, a worker's first use of
a region over the limit, what `cuda_shared_memory` makes from its arguments; the periodic call's
thread (its name, a daemon) and close's default bound. Without a GPU (a recording runtime, or
tests/support/fake_cudart.py); tests/MUTANTS.md lists them."""

from __future__ import annotations

import ctypes
import gc
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from server import periodic
from server.backends.cuda_shm import (
    DISABLED,
    CudaRegion,
    CudaRegistry,
    CudaSharedMemory,
    NoCudaSharedMemory,
    cuda_shared_memory,
)
from server.backends.cudart import IPC_HANDLE_SIZE, CudaRuntime
from server.errors import InvalidRequest, RegionExists, RegionNotFound, SharedMemoryLimit, Unsupported
from server.protocol.cuda_shm_workers import KIND, CudaEntry, CudaWorkersRegistry
from server.protocol.shm_book import ShmBook
from tests.support.fake_cudart import FakeCudart

GPU = ["CUDAExecutionProvider", "CPUExecutionProvider"]
WAIT_S = 10.0  # a bound on waits for the periodic thread, never reached when the code is right


class Device:
    """A CUDA runtime stand-in over one "device" buffer (host memory): records every copy and
    refuses (AssertionError, before touching memory) an address outside the buffer or the host
    array, so a wrong pointer fails the test instead of crashing it. `during_open` runs inside
    ipc_open, as a concurrent caller would."""

    def __init__(self, size: int, fill: bytes = b"") -> None:
        self.memory = ctypes.create_string_buffer(fill, size)
        self.base = ctypes.addressof(self.memory)
        self.size = size
        self.copies: list[tuple[str, int, int, int, int]] = []
        self.during_open: Callable[[], None] | None = None
        self.closed: list[int] = []

    def ipc_open(self, handle: Any, device_id: int) -> int:
        hook, self.during_open = self.during_open, None
        if hook is not None:
            hook()
        return self.base

    def ipc_close(self, pointer: int, device_id: int) -> None:
        self.closed.append(pointer)

    def _inside(self, device: int, nbytes: int) -> None:
        assert isinstance(device, int) and self.base <= device <= device + nbytes <= self.base + self.size

    def copy_to_host(self, host: int, device: int, nbytes: int, device_id: int) -> None:
        self.copies.append(("to host", host, device - self.base, nbytes, device_id))
        assert isinstance(host, int) and host > 0
        self._inside(device, nbytes)
        ctypes.memmove(host, device, nbytes)

    def copy_to_device(self, device: int, host: int, nbytes: int, device_id: int) -> None:
        self.copies.append(("to device", device - self.base, host, nbytes, device_id))
        assert isinstance(host, int) and host > 0
        self._inside(device, nbytes)
        ctypes.memmove(device, host, nbytes)


# -- cuda_shm.py: a region's copies ---------------------------------------------------------------


def test_a_read_copies_from_the_regions_offset_into_a_new_host_array() -> None:
    device = Device(16, fill=bytes(range(16)))
    region = CudaRegion("gpu", 1, 16, device.base, device)  # type: ignore[arg-type]
    out = region.read(4, 8)
    assert out.tobytes() == bytes(range(4, 12))
    assert device.copies == [("to host", out.ctypes.data, 4, 8, 1)]
    assert region.read(4, 0).size == 0 and len(device.copies) == 1  # nothing to copy: no copy


def test_a_write_copies_the_data_to_the_regions_offset() -> None:
    """Any layout in (here a transposed view): its bytes in C order at the offset, on the region's GPU."""
    device = Device(16)
    region = CudaRegion("gpu", 1, 16, device.base, device)  # type: ignore[arg-type]
    data = np.arange(6, dtype=np.uint8).reshape(2, 3).T
    region.write(6, data)
    assert device.memory.raw[6:12] == bytes([0, 3, 1, 4, 2, 5])
    ((way, offset, _, nbytes, device_id),) = device.copies
    assert (way, offset, nbytes, device_id) == ("to device", 6, 6, 1)
    region.write(0, np.zeros(0, np.uint8))
    assert len(device.copies) == 1


# -- cuda_shm.py: the registry ---------------------------------------------------------------------


def test_without_cuda_nothing_is_registered_nor_mapped() -> None:
    none = NoCudaSharedMemory(DISABLED)
    assert none.has("gpu") is False and none.mapped("gpu") is False and none.lookup("gpu") is None
    none.unregister("gpu")  # a no-op, as Triton's for an unknown name
    none.close()
    assert none.status("") == []
    with pytest.raises(RegionNotFound, match="--allow-client-shm"):
        none.status("gpu")


def test_a_register_without_a_name_says_so_whole() -> None:
    cuda = CudaRegistry(CudaRuntime(FakeCudart()), 1, max_regions=1, max_bytes=8)
    with pytest.raises(InvalidRequest, match=r"^cannot register a CUDA shared memory region without a name$"):
        cuda.register("", b"\0" * IPC_HANDLE_SIZE, 0, 8)


def test_status_of_an_unknown_name_is_tritons_cuda_text() -> None:
    cuda = CudaRegistry(CudaRuntime(FakeCudart()), 1, max_regions=1, max_bytes=8)
    with pytest.raises(RegionNotFound, match=r"^Unable to find cuda shared memory region: 'missing'$"):
        cuda.status("missing")


def test_a_name_being_mapped_is_taken_for_another_register() -> None:
    """A second Register of a name while its handle is still being opened is refused (the name is
    reserved from the check to the registration); the first one registers it."""
    device = Device(8)
    cuda = CudaRegistry(device, 1, max_regions=4, max_bytes=64)  # type: ignore[arg-type]
    handle = b"\1" * IPC_HANDLE_SIZE
    refused: list[BaseException] = []

    def meanwhile() -> None:
        try:
            cuda.register("gpu", handle, 0, 8)
        except RegionExists as err:
            refused.append(err)

    device.during_open = meanwhile
    cuda.register("gpu", handle, 0, 8)
    assert [str(err) for err in refused] == ["shared memory region 'gpu' already in manager"]
    assert [r.name for r in cuda.status("")] == ["gpu"] and cuda.live_mappings == (1, 8)


def test_a_workers_first_use_over_the_limit_says_map(tmp_path: Path) -> None:
    """Worker b still holds a region unregistered since: its first use of another region, one
    mapping past max_shm_regions, is refused as a map (not a register) of that region."""
    lib = FakeCudart()
    a, b = (
        CudaWorkersRegistry(
            ShmBook(tmp_path, CudaEntry, KIND), CudaRuntime(lib), 1, max_regions=1, max_bytes=64
        )
        for _ in range(2)
    )
    try:
        a.register("old", lib.export(8)[0], 0, 8)
        held = b.lookup("old")
        assert held is not None
        a.unregister("old")
        gc.collect()
        a.register("new", lib.export(8)[0], 0, 8)
        with pytest.raises(
            SharedMemoryLimit,
            match=r"^cannot map CUDA shared memory region 'new': 1 CUDA regions are mapped, "
            r"the most this server maps \(max_shm_regions=1\)$",
        ):
            b.lookup("new")
    finally:
        a.close()
        b.close()


# -- cuda_shm.py: what cuda_shared_memory makes ----------------------------------------------------


def reason(made: CudaSharedMemory) -> str:
    assert isinstance(made, NoCudaSharedMemory)
    return made.reason


def test_without_cuda_in_onnxruntime_the_refusal_lists_its_providers() -> None:
    listed = reason(cuda_shared_memory(["CPUExecutionProvider", "AzureExecutionProvider"], allowed=True))
    assert listed == (
        "CUDA shared memory needs a GPU: none is visible to this server "
        "(onnxruntime providers: CPUExecutionProvider, AzureExecutionProvider)"
    )
    assert reason(cuda_shared_memory([], allowed=True)).endswith("(onnxruntime providers: none)")


def test_a_runtime_listing_no_gpu_is_refused_in_those_words() -> None:
    made = cuda_shared_memory(GPU, allowed=True, loader=lambda: CudaRuntime(FakeCudart(devices=0)))
    assert reason(made) == "CUDA shared memory needs a GPU: the CUDA runtime lists none"
    with pytest.raises(Unsupported, match=r"^cannot register CUDA shared memory region 'g': CUDA shared"):
        made.register("g", b"", 0, 8)


def test_one_gpu_is_enough_and_the_registry_maps_through_the_loaded_runtime() -> None:
    """One GPU: a registry (by default one region of one byte) whose mappings use the runtime loaded."""
    lib = FakeCudart(devices=1)
    made = cuda_shared_memory(GPU, allowed=True, loader=lambda: CudaRuntime(lib))
    assert isinstance(made, CudaRegistry) and (made.max_regions, made.max_bytes) == (1, 1)
    handle, address = lib.export(1, fill=b"\x07")
    made.register("g", handle, 0, 1)
    region = made.lookup("g")
    assert region is not None and region.read(0, 1).tobytes() == b"\x07" and lib.open == {address: 0}


def test_under_workers_the_book_registry_gets_the_loaded_runtime_and_the_gpu_count() -> None:
    runtime = CudaRuntime(FakeCudart(devices=2))
    got: list[tuple[CudaRuntime, int]] = []
    made = NoCudaSharedMemory("the book's")

    def book_registry(cudart: CudaRuntime, count: int) -> CudaSharedMemory:
        got.append((cudart, count))
        return made

    assert cuda_shared_memory(GPU, allowed=True, loader=lambda: runtime, book_registry=book_registry) is made
    assert got == [(runtime, 2)] and got[0][0] is runtime


# -- periodic.py ---------------------------------------------------------------------------------


def test_the_call_runs_on_a_daemon_thread_named_for_it() -> None:
    """The thread is named `what` (as py-spy and thread dumps show it) and is a daemon, so a
    process whose close never came still exits."""
    seen: list[tuple[str, bool]] = []
    called = threading.Event()

    def call() -> None:
        seen.append((threading.current_thread().name, threading.current_thread().daemon))
        called.set()

    calls = periodic.Periodic(call, 0.001, "segment trim")
    try:
        assert called.wait(WAIT_S)
    finally:
        calls.close()
    assert seen[0] == ("segment trim", True)


def test_close_waits_five_seconds_at_most_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """close() bounds its wait for a call under way: the join's timeout, recorded."""
    joined: list[float | None] = []
    join = threading.Thread.join

    def recorded(self: threading.Thread, timeout: float | None = None) -> None:
        joined.append(timeout)
        join(self, timeout)

    calls = periodic.Periodic(lambda: None, 3600.0, "idle")
    monkeypatch.setattr(threading.Thread, "join", recorded)
    calls.close()
    assert joined == [5.0] and not calls.is_alive()
