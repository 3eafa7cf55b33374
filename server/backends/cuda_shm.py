"""CUDA shared memory: clients' device buffers, registered by CUDA IPC handle.

A client (tritonclient.utils.cuda_shared_memory) allocates device memory, exports it with
cudaIpcGetMemHandle and registers the 64-byte handle; the server maps it with cudaIpcOpenMemHandle
on the named GPU (server/backends/cudart.py, ctypes). A request then names the region for an
input or output as it would a system region: an input is copied device to host into the request's
own array (the batcher gathers host arrays, so a batch of several requests is one host buffer that
IO binding copies to the device once); an output is copied host to device into the region after
the run. Regions count against the same limits as system shared memory (max_shm_regions,
max_shm_bytes, separately), and like those, registration is opt-in (--allow-client-shm).

Unregister while a request uses a region is safe, as for system regions: the name goes at once,
and the mapping is closed (cudaIpcCloseMemHandle) when the last request holding it lets go.

Under `--workers N` the regions are the server's, not a worker's (server/protocol/
cuda_shm_workers.py): the registering worker maps the handle, and each other worker maps it the
first time one of its requests names the region.

Without a GPU (or with registration off), every server gets `NoCudaSharedMemory`, which says why:
Status and Unregister answer truthfully (nothing is registered: an empty list, NOT_FOUND for a
name, unregistering a no-op, as Triton's CPU build) and Register is refused (UNIMPLEMENTED).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from server.backends.cudart import CudaError, CudaRuntime, CudaUnavailable, load_cudart, parse_ipc_handle
from server.errors import InvalidRequest, RegionExists, RegionNotFound, Unsupported
from server.shm_regions_book import drop, over_limit, pick

CUDA_PROVIDER = "CUDAExecutionProvider"
DISABLED = (
    "client shared memory is disabled: start the server with --allow-client-shm "
    "(SLUICEWAY_ALLOW_CLIENT_SHM=true) to enable it"
)


@dataclass(frozen=True, slots=True)
class CudaRegionInfo:
    name: str
    device_id: int
    byte_size: int


@dataclass(eq=False)
class CudaRegion:
    """A mapped client buffer. Requests hold it while they use it (see the module docstring);
    `view` and `write` take ranges the caller has checked against `byte_size`."""

    name: str
    device_id: int
    byte_size: int
    pointer: int
    cudart: CudaRuntime

    def check_size(self) -> None:
        return None  # a device allocation cannot shrink under its mapping, unlike a shm object

    def read(self, offset: int, byte_size: int) -> np.ndarray:
        """Bytes [offset, offset + byte_size) copied to a new host array (a device pointer has no
        host view)."""
        out = np.empty(byte_size, dtype=np.uint8)
        if byte_size:
            self._copy(
                lambda: self.cudart.copy_to_host(
                    out.ctypes.data, self.pointer + offset, byte_size, self.device_id
                )
            )
        return out

    def write(self, offset: int, data: np.ndarray) -> None:
        """`data` (contiguous bytes) into the region at `offset`."""
        source = np.ascontiguousarray(data)
        if source.nbytes:
            self._copy(
                lambda: self.cudart.copy_to_device(
                    self.pointer + offset, source.ctypes.data, source.nbytes, self.device_id
                )
            )

    def _copy(self, copy: Callable[[], None]) -> None:
        try:
            copy()
        except CudaError as err:  # most likely the client freed or shrank what it registered
            raise InvalidRequest(f"CUDA shared memory region '{self.name}': {err}") from None


class CudaSharedMemory(Protocol):
    """What the servicer's CudaSharedMemory* RPCs, and requests naming a region, call."""

    def register(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None: ...

    def status(self, name: str) -> Sequence[CudaRegionInfo]: ...

    def unregister(self, name: str) -> None: ...

    def has(self, name: str) -> bool: ...

    def mapped(self, name: str) -> bool: ...

    def lookup(self, name: str) -> CudaRegion | None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class NoCudaSharedMemory:
    reason: str

    def has(self, name: str) -> bool:
        return False

    def mapped(self, name: str) -> bool:
        return False

    def close(self) -> None:
        return None

    def register(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None:
        raise Unsupported(f"cannot register CUDA shared memory region '{name}': {self.reason}")

    def status(self, name: str) -> Sequence[CudaRegionInfo]:
        if name:
            raise RegionNotFound(f"Unable to find cuda shared memory region: '{name}' ({self.reason})")
        return []

    def unregister(self, name: str) -> None:
        return None  # nothing can be registered; Triton answers OK for unknown names too

    def lookup(self, name: str) -> CudaRegion | None:
        return None


class CudaRegistry:
    """Registered CUDA regions, bounded in count and bytes; thread-safe (a region's last holder
    may let go of it on an executor thread)."""

    def __init__(
        self,
        cudart: CudaRuntime,
        device_count: int,
        *,
        max_regions: int,
        max_bytes: int,
        taken: Callable[[str], bool] = lambda name: False,
    ) -> None:
        self._cudart = cudart
        self._device_count = device_count
        self.max_regions = max_regions
        self.max_bytes = max_bytes
        self._taken = taken  # whether a system region has the name: one namespace, as Triton's
        self._regions: dict[str, CudaRegion] = {}
        self._opening: set[str] = set()  # names being mapped now: taken too
        self._lock = threading.RLock()  # reentrant: a finalizer may run inside a locked section
        self._live = 0  # mappings not yet closed: registered, or unregistered but still in use
        self._live_bytes = 0

    @property
    def live_mappings(self) -> tuple[int, int]:
        with self._lock:
            return self._live, self._live_bytes

    def register(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None:
        region = self._open(name, raw_handle, device_id, byte_size)
        self._named(name, region)

    def _named(self, name: str, region: CudaRegion | None) -> None:
        """A Register's end: its name no longer being opened, and (done) its region registered; one
        step, so that a concurrent Register of the name finds it taken throughout."""
        with self._lock:
            self._opening.discard(name)
            if region is not None:
                self._regions[name] = region

    def _open(
        self, name: str, raw_handle: bytes, device_id: int, byte_size: int, *, verb: str = "register"
    ) -> CudaRegion:
        """The region checked, counted against the limits and mapped (its mapping closed when the
        last holder lets go), not yet in the registry: a Register's name stays reserved until
        `_named`. `verb` "map": a region registered through another worker, mapped here for a
        request (its name is booked: not checked again, nor reserved)."""
        where = f"cannot {verb} CUDA shared memory region '{name}'"
        if not name:
            raise InvalidRequest("cannot register a CUDA shared memory region without a name")
        if byte_size <= 0:
            raise InvalidRequest(f"{where}: byte_size must be > 0")
        if not 0 <= device_id < self._device_count:
            raise InvalidRequest(
                f"{where}: device_id {device_id} is not one of this server's {self._device_count} GPUs"
            )
        try:
            handle = parse_ipc_handle(raw_handle)
        except ValueError as err:
            raise InvalidRequest(f"{where}: {err}") from None
        registering = verb == "register"
        self._reserve(name, byte_size, check_name=registering)
        try:
            pointer = self._cudart.ipc_open(handle, device_id)
        except BaseException as err:
            self._released(byte_size)
            if registering:
                self._named(name, None)
            if isinstance(err, CudaError):
                raise InvalidRequest(
                    f"{where}: cannot open its CUDA IPC handle on GPU {device_id}: {err}"
                ) from None
            raise
        region = CudaRegion(name, device_id, byte_size, pointer, self._cudart)
        weakref.finalize(region, self._close, self._cudart, pointer, device_id, byte_size)
        return region

    def _reserve(self, name: str, byte_size: int, *, check_name: bool = True) -> None:
        """Count a region about to be mapped, or raise naming the limit (or the name) in the way."""
        with self._lock:
            # (`has`: under --workers, the book: a name registered through any worker is refused
            # before its handle is opened, as in one process)
            if check_name and (
                name in self._regions or name in self._opening or self.has(name) or self._taken(name)
            ):  # Triton's wording
                raise RegionExists(f"shared memory region '{name}' already in manager")
            what = f"CUDA shared memory region '{name}'"
            live = (self._live, self._live_bytes)
            verb = "register" if check_name else "map"
            refused = over_limit(
                what, byte_size, live, self.max_regions, self.max_bytes, "CUDA regions", verb=verb
            )
            if refused is not None:
                raise refused
            self._live += 1
            self._live_bytes += byte_size
            if check_name:
                self._opening.add(name)

    def _released(self, byte_size: int) -> None:
        with self._lock:
            self._live -= 1
            self._live_bytes -= byte_size

    def _close(self, cudart: CudaRuntime, pointer: int, device_id: int, byte_size: int) -> None:
        try:
            cudart.ipc_close(pointer, device_id)
        finally:
            self._released(byte_size)

    def status(self, name: str) -> Sequence[CudaRegionInfo]:
        with self._lock:
            regions = pick(self._regions, name, "cuda")
        return [CudaRegionInfo(r.name, r.device_id, r.byte_size) for r in regions]

    def unregister(self, name: str) -> None:
        """Forget the named region (every region when `name` is empty); unknown names are fine."""
        with self._lock:
            dropped = drop(self._regions, name)
        del dropped  # closed by their finalizers once no request holds them (now, when none does)

    def has(self, name: str) -> bool:
        return name in self._regions

    def mapped(self, name: str) -> bool:
        """Whether this process has the region open (under --workers, `has` asks the book)."""
        return name in self._regions

    def lookup(self, name: str) -> CudaRegion | None:
        return self._regions.get(name)  # a dict read: atomic, no lock needed

    def close(self) -> None:
        """At shutdown: forget every region (mappings close with their last holder). Not
        `unregister("")`: under --workers that would be every worker's registrations."""
        with self._lock:
            dropped = drop(self._regions, "")
        del dropped


# Under --workers: makes the registry over the workers' book (server/protocol/cuda_shm_workers.py)
# from the runtime and the GPU count, with the limits and the system regions' names.
BookRegistry = Callable[[CudaRuntime, int], CudaSharedMemory]


def cuda_shared_memory(
    available_providers: Sequence[str],
    *,
    allowed: bool = False,
    max_regions: int = 1,
    max_bytes: int = 1,
    taken: Callable[[str], bool] = lambda name: False,
    loader: Callable[[], CudaRuntime] = load_cudart,
    book_registry: BookRegistry | None = None,
) -> CudaSharedMemory:
    """The CUDA shared-memory implementation for this server: regions over IPC handles when its
    onnxruntime offers CUDA, a GPU answers and registration is allowed (under --workers,
    `book_registry`'s, every worker's); else a refusal saying why. (The runtime is touched only
    then.)"""
    listed = ", ".join(available_providers) or "none"
    if CUDA_PROVIDER not in available_providers:
        return NoCudaSharedMemory(
            "CUDA shared memory needs a GPU: none is visible to this server "
            f"(onnxruntime providers: {listed})"
        )
    if not allowed:
        return NoCudaSharedMemory(DISABLED)
    try:
        cudart = loader()
        count = cudart.device_count()
    except (CudaUnavailable, CudaError, OSError) as err:
        return NoCudaSharedMemory(f"CUDA shared memory needs a GPU: the CUDA runtime did not answer ({err})")
    if count < 1:
        return NoCudaSharedMemory("CUDA shared memory needs a GPU: the CUDA runtime lists none")
    if book_registry is not None:
        return book_registry(cudart, count)
    return CudaRegistry(cudart, count, max_regions=max_regions, max_bytes=max_bytes, taken=taken)
