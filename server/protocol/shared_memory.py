"""The system shared-memory registry: named regions clients register, bounded in count and bytes.

Triton's semantics (docs/protocol/extension_shared_memory.md): a name is registered once
(ALREADY_EXISTS), Status and Unregister take a name or "" for every region, unregistering an
unknown name is not an error. Client registration is opt-in (`allow_client_shm`, off by default,
as Triton's `--allow-client-shm`): a registered object is read and written by the server.

Unregister while a request uses a region is safe: the name goes at once (a new request cannot use
it), while each request holds the Region it resolved, and the numpy views of its inputs hold the
mapping. The mapping is unmapped and its descriptor closed when the last holder lets go (a
weakref.finalize on the mmap object), and only then stop it counting against the limits. That can
happen on any thread (the last holder may be an executor's), hence the lock.

Under `--workers N` the registrations are the server's, not a worker's: shm_workers.py's subclass
keeps them in a book every worker reads (shm_book.py).
"""

from __future__ import annotations

import gc
import os
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from server.errors import InvalidRequest, RegionExists, RegionNotFound, Unsupported
from server.protocol.shm_regions import SHM_DIR, Region, SharedRegion, mapped_bytes, open_region
from server.shm_regions_book import drop, over_limit, pick

DISABLED_MESSAGE = (
    "client shared memory is disabled: start the server with --allow-client-shm "
    "(SLUICEWAY_ALLOW_CLIENT_SHM=true) to enable it"
)


@dataclass(frozen=True, slots=True)
class RegionInfo:
    name: str
    key: str
    offset: int
    byte_size: int


class DeviceRegions(Protocol):
    """CUDA regions (server/backends/cuda_shm.py): one namespace with the system regions."""

    def has(self, name: str) -> bool: ...

    def mapped(self, name: str) -> bool: ...

    def lookup(self, name: str) -> SharedRegion | None: ...


class SharedMemoryRegistry:
    def __init__(self, *, allowed: bool, max_regions: int, max_bytes: int, directory: Path = SHM_DIR) -> None:
        self.allowed = allowed
        self.max_regions = max_regions
        self.max_bytes = max_bytes
        self._directory = directory
        self._regions: dict[str, Region] = {}
        # Reentrant: dropping a region's last reference runs its finalizer (which takes the lock)
        # wherever that happens, even inside a locked section.
        self._lock = threading.RLock()
        self._live = 0  # mappings not yet released: registered, or unregistered but still in use
        self._live_bytes = 0
        self.device_regions: DeviceRegions | None = None  # set by the app where CUDA regions exist

    def has(self, name: str) -> bool:
        """Whether a system region has this name (CUDA registration refuses it too)."""
        return name in self._regions

    @property
    def live_mappings(self) -> tuple[int, int]:
        """(mappings, bytes) not yet released, registered or still held by a request."""
        with self._lock:
            return self._live, self._live_bytes

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self._check_new(name)
        region = open_region(name, key, offset, byte_size, self._directory)
        self._keep(region, replace=False)

    def _check_new(self, name: str) -> None:
        """Register's checks before anything is opened: allowed, a name, not taken (either kind)."""
        self._check_allowed()
        if not name:
            raise InvalidRequest("cannot register a shared memory region without a name")
        with self._lock:
            if self.has(name) or self._device_has(name):  # Triton's wording
                raise RegionExists(f"shared memory region '{name}' already in manager")

    def _device_has(self, name: str) -> bool:
        """Whether a CUDA region has this name (registered, not only mapped here)."""
        return self.device_regions is not None and self.device_regions.has(name)

    def _keep(self, region: Region, *, replace: bool, verb: str = "register", tag: str = "") -> None:
        """Add a region just mapped, within the limits (closed and the refusal raised if not);
        `replace`: a mapping of the name this process holds goes (shm_workers.py's stale ones)."""
        size = mapped_bytes(region)
        refused = self._admit(region, size, replace, verb, tag)
        if refused is not None and self._live > len(self._regions):
            # Unregistered mappings still count: those a finished request left in a reference cycle
            # (a failed one's traceback) go with a collection, so try once more after one.
            gc.collect()
            refused = self._admit(region, size, replace, verb, tag)
        if refused is not None:
            close_unseen(region)
            raise refused
        weakref.finalize(region.mapping, self._released, region.fd, size)

    def _admit(self, region: Region, size: int, replace: bool, verb: str, tag: str) -> Exception | None:
        """Add `region` within the limits, or the error saying which one it would pass."""
        name = region.name
        with self._lock:
            if name in self._regions and not replace:  # registered meanwhile by a concurrent call
                return RegionExists(f"shared memory region '{name}' already in manager")
            self._forget(name)  # (its last holder's finalizer releases it)
            limit = (self._live, self._live_bytes)
            refused = over_limit(
                f"shared memory region '{name}'", size, limit, self.max_regions, self.max_bytes, verb=verb
            )
            if refused is not None:
                return refused
            self._regions[name] = region
            self._admitted(name, tag)
            self._live += 1
            self._live_bytes += size
        return None

    def _admitted(self, name: str, tag: str) -> None:
        """Told, under the lock, of each mapping added (shm_workers.py notes which entry it is)."""

    def _forget(self, name: str) -> None:
        """Drop this process's mapping of `name` (held on by requests that resolved it)."""
        with self._lock:
            self._regions.pop(name, None)

    def _released(self, fd: int, size: int) -> None:
        os.close(fd)
        with self._lock:
            self._live -= 1
            self._live_bytes -= size

    def status(self, name: str) -> Sequence[RegionInfo]:
        """The named region, or every region when `name` is empty (RegionNotFound if unknown)."""
        with self._lock:
            regions = pick(self._regions, name, "system")
        return [RegionInfo(r.name, r.key, r.offset, r.byte_size) for r in regions]

    def unregister(self, name: str) -> None:
        """Forget the named region (every region when `name` is empty); unknown names are fine."""
        self._check_allowed()
        with self._lock:
            dropped = drop(self._regions, name)
        # Unmapped by their finalizers once no request holds them (now, when none does).
        del dropped

    def lookup(self, name: str) -> SharedRegion:
        """The region a request names (system, else CUDA), for that request to hold while it uses it.
        A CUDA region this process has mapped is looked up first: under --workers a system lookup
        that misses reads the book (a file's open) at every request naming a CUDA region."""
        devices = self.device_regions
        region: SharedRegion | None = None
        if devices is not None and devices.mapped(name):
            region = devices.lookup(name)  # (None: unregistered since; then as any other name)
        if region is None:
            region = self._local(name)
        if region is None and devices is not None:
            region = devices.lookup(name)
        if region is None:
            if not self.allowed:
                raise Unsupported(DISABLED_MESSAGE)
            raise RegionNotFound(f"Unable to find shared memory region: '{name}'")
        return region

    def _local(self, name: str) -> Region | None:
        return self._regions.get(name)  # a dict read: atomic, no lock needed

    def close(self) -> None:
        """At shutdown: forget every region (mappings go with their last holder)."""
        with self._lock:
            dropped = list(self._regions.values())
            self._regions.clear()
        del dropped

    def _check_allowed(self) -> None:
        if not self.allowed:
            raise Unsupported(DISABLED_MESSAGE)


def close_unseen(region: Region) -> None:
    """A region nothing else has seen: unmapped and closed now."""
    region.mapping.close()
    os.close(region.fd)
