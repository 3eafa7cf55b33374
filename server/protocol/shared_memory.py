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

Under `--workers N` the registrations are the server's, not a worker's (shm_book.py): a region
registered through one worker is mapped by another the first time one of its requests names it,
and a mapping is dropped once the book says its name was unregistered (or registered again).
"""

from __future__ import annotations

import gc
import os
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from server.errors import InvalidRequest, RegionExists, RegionNotFound, Unsupported
from server.protocol.shm_book import ShmBook, adopt, new_entry
from server.protocol.shm_regions import SHM_DIR, Region, SharedRegion, mapped_bytes, open_region

if TYPE_CHECKING:
    from server.settings import ServerSettings
from server.shm_regions_book import drop, over_limit, pick

REFRESH_S = 0.5  # under --workers, how soon a region unregistered through another worker is let go of
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

    def lookup(self, name: str) -> SharedRegion | None: ...


class SharedMemoryRegistry:
    def __init__(
        self,
        *,
        allowed: bool,
        max_regions: int,
        max_bytes: int,
        directory: Path = SHM_DIR,
        book: ShmBook | None = None,
    ) -> None:
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
        self._book = book  # every worker's registrations (--workers), else None: this process's
        self._ids: dict[str, str] = {}  # the book's entry each mapped region is
        self._seen = book.generation() if book is not None else 0
        self._stop = threading.Event()
        if book is not None:  # a worker that gets no request still lets go of unregistered regions
            threading.Thread(target=self._watch, args=(book,), name="shm-book", daemon=True).start()

    def has(self, name: str) -> bool:
        """Whether a system region has this name (CUDA registration refuses it too)."""
        if self._book is not None:
            return self._book.get(name) is not None
        return name in self._regions

    @property
    def live_mappings(self) -> tuple[int, int]:
        """(mappings, bytes) not yet released, registered or still held by a request."""
        with self._lock:
            return self._live, self._live_bytes

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self._check_allowed()
        if not name:
            raise InvalidRequest("cannot register a shared memory region without a name")
        with self._lock:
            cuda = self.device_regions is not None and self.device_regions.lookup(name) is not None
            if self.has(name) or cuda:  # Triton's wording
                raise RegionExists(f"shared memory region '{name}' already in manager")
        region = open_region(name, key, offset, byte_size, self._directory)
        size = mapped_bytes(region)
        entry = new_entry(region)
        if self._book is not None:
            try:  # the server's limits, and its one name, across the workers
                self._book.add(entry, self.max_regions, self.max_bytes)
            except BaseException:
                _close(region)
                raise
            self._refresh(self._book)  # a mapping left here of the name's last registration goes
        refused = self._admit(region, size, entry.id)
        if isinstance(refused, RegionExists) and self._ids.get(name) == entry.id:
            _close(region)  # this very entry, mapped meanwhile by a lookup of this worker's
            return
        if refused is not None and self._live > len(self._regions):
            # Unregistered mappings still count: those a finished request left in a reference cycle
            # (a failed one's traceback) go with a collection, so try once more after one.
            gc.collect()
            refused = self._admit(region, size, entry.id)
        if refused is not None:
            _close(region)  # nothing else has seen it
            if self._book is not None:
                self._book.remove(name)
            raise refused
        weakref.finalize(region.mapping, self._released, region.fd, size)
        if self._book is not None:
            self._still_booked(name, entry.id)  # (not: an Unregister came after this Register)

    def _admit(self, region: Region, size: int, entry_id: str) -> Exception | None:
        """Add `region` within the limits, or the error saying which one it would pass."""
        name = region.name
        with self._lock:
            if name in self._regions:  # registered meanwhile by a concurrent call
                return RegionExists(f"shared memory region '{name}' already in manager")
            limit = (self._live, self._live_bytes)
            refused = over_limit(
                f"shared memory region '{name}'", size, limit, self.max_regions, self.max_bytes
            )
            if refused is not None:
                return refused
            self._regions[name] = region
            self._ids[name] = entry_id
            self._live += 1
            self._live_bytes += size
        return None

    def _released(self, fd: int, size: int) -> None:
        os.close(fd)
        with self._lock:
            self._live -= 1
            self._live_bytes -= size

    def status(self, name: str) -> Sequence[RegionInfo]:
        """The named region, or every region when `name` is empty (RegionNotFound if unknown)."""
        if self._book is not None:
            entries = pick({e.name: e for e in self._book.entries()}, name, "system")
            return [RegionInfo(e.name, e.key, e.offset, e.byte_size) for e in entries]
        with self._lock:
            regions = pick(self._regions, name, "system")
        return [RegionInfo(r.name, r.key, r.offset, r.byte_size) for r in regions]

    def unregister(self, name: str) -> None:
        """Forget the named region (every region when `name` is empty); unknown names are fine."""
        self._check_allowed()
        if self._book is not None:
            self._book.remove(name)
        with self._lock:
            dropped = drop(self._regions, name)
            for gone in dropped:
                self._ids.pop(gone.name, None)
        # Unmapped by their finalizers once no request holds them (now, when none does).
        del dropped

    def lookup(self, name: str) -> SharedRegion:
        """The region a request names (system, else CUDA), for that request to hold while it uses it."""
        seen = self._seen  # (read before the dict: a refresh drops mappings, then moves it)
        region: SharedRegion | None = self._regions.get(name)  # a dict read: atomic, no lock needed
        if self._book is not None and (region is None or self._book.generation() != seen):
            region = self._from_book(name)
        if region is None and self.device_regions is not None:
            region = self.device_regions.lookup(name)
        if region is None:
            if not self.allowed:
                raise Unsupported(DISABLED_MESSAGE)
            raise RegionNotFound(f"Unable to find shared memory region: '{name}'")
        return region

    def _from_book(self, name: str) -> Region | None:
        """Under --workers: the named region as the book has it now, mapped here the first time."""
        assert self._book is not None
        self._refresh(self._book)
        region = self._regions.get(name)
        if region is not None:
            return region
        entry = self._book.get(name)
        if entry is None:
            return None
        region = adopt(entry, self._directory)  # the object as registered, not the key again
        size = mapped_bytes(region)
        refused = self._admit(region, size, entry.id)
        if isinstance(refused, RegionExists):  # mapped meanwhile by another of this worker's requests
            _close(region)
            return self._regions.get(name)
        if refused is not None:
            _close(region)
            raise refused
        weakref.finalize(region.mapping, self._released, region.fd, size)
        return region if self._still_booked(name, entry.id) else None

    def _still_booked(self, name: str, entry_id: str) -> bool:
        """After a mapping is added: whether the book still has its entry; if not, the mapping goes.
        An Unregister between reading the entry and adding the mapping moved the generation before
        the mapping was there to be checked, so no refresh would ever drop it: a tester's Register
        racing another worker's Unregister left the old object served, for good, by one worker
        (189 of 9,606 rounds the Unregister won)."""
        assert self._book is not None
        entry = self._book.get(name)
        if entry is not None and entry.id == entry_id:
            return True
        with self._lock:
            if self._ids.get(name) == entry_id:
                drop(self._regions, name)
                del self._ids[name]
        return False

    def _refresh(self, book: ShmBook) -> None:
        """After an Unregister anywhere (the book's generation moved), drop the mappings whose entry
        is gone or new (requests holding one keep it)."""
        generation = book.generation()  # (read first: an Unregister after it moves it again)
        if generation == self._seen:
            return
        with self._lock:
            for mapped, entry_id in list(self._ids.items()):
                entry = book.get(mapped)
                if entry is None or entry.id != entry_id:
                    drop(self._regions, mapped)
                    del self._ids[mapped]
            self._seen = generation

    def _watch(self, book: ShmBook) -> None:
        """Under --workers: a region unregistered through another worker is let go of here within
        REFRESH_S (it had stayed mapped, its pages and descriptors held, until this worker's next
        shared-memory request: past the server's limits, a tester's)."""
        while not self._stop.wait(REFRESH_S):
            self._refresh(book)

    def close(self) -> None:
        """At shutdown: forget every region (mappings go with their last holder)."""
        self._stop.set()
        with self._lock:
            dropped = list(self._regions.values())
            self._regions.clear()
            self._ids.clear()
        del dropped
        if self._book is not None:
            self._book.close()

    def _check_allowed(self) -> None:
        if not self.allowed:
            raise Unsupported(DISABLED_MESSAGE)


def _close(region: Region) -> None:
    """A region nothing else has seen: unmapped and closed now."""
    region.mapping.close()
    os.close(region.fd)


def system_registry(settings: ServerSettings) -> SharedMemoryRegistry:
    """The server's registry; under --workers over the book in the parent's share directory."""
    shared = settings.rollout_share_dir if settings.allow_client_shm else None
    return SharedMemoryRegistry(
        allowed=settings.allow_client_shm,
        max_regions=settings.max_shm_regions,
        max_bytes=settings.max_shm_bytes,
        book=ShmBook(shared) if shared is not None else None,
    )
