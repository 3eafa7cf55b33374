"""Under `serve --workers N`: CUDA shared-memory regions every worker sees, booked as the system
regions are (shm_book.py), as entries of their own kind.

A client's connections reach different workers (SO_REUSEPORT), so a CUDA region registered through
one was unknown to the others, and CUDA shared memory needed one server process. Now Register maps
the handle in the worker it reached (a handle that does not open is refused there, as in one
process) and books the region: its name (one across both kinds of region and every worker), the
handle's 64 bytes, the GPU and the size, counted against the server's limits. Another worker maps
the handle the first time one of its requests names the region (cudaIpcOpenMemHandle in that
process: its own CUDA context on the GPU, if it had none), and lets go of it as the system regions'
mappings go (booked_mappings.py): once the book's counter has moved and its entry is gone or new,
at a lookup or within REFRESH_S. CUDA counts the opens of one handle in a process, so a handle
mapped twice here (two requests at once, or two names) is closed twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from server.backends.cuda_shm import (
    BookRegistry,
    CudaRegion,
    CudaRegionInfo,
    CudaRegistry,
    CudaSharedMemory,
    cuda_shared_memory,
)
from server.backends.cudart import CudaRuntime
from server.protocol.booked_mappings import BookedMappings
from server.protocol.shm_book import ShmBook
from server.shm_regions_book import pick

if TYPE_CHECKING:
    from server.settings import ServerSettings

KIND = "cuda"  # the entries' files in the book's directory: cuda-<hash of the name>


@dataclass(frozen=True, slots=True)
class CudaEntry:
    """One CUDA registration: the region's name, its IPC handle (hex), GPU and size, and an id that
    tells a re-registration from the one before."""

    name: str
    handle: str
    device_id: int
    byte_size: int
    id: str

    @property
    def counted(self) -> int:
        return self.byte_size


class CudaWorkersRegistry(BookedMappings[CudaEntry, CudaRegion], CudaRegistry):
    """A worker's CUDA registry whose registrations are the book's (every worker's)."""

    def __init__(
        self,
        book: ShmBook[CudaEntry],
        cudart: CudaRuntime,
        device_count: int,
        *,
        max_regions: int,
        max_bytes: int,
        taken: Callable[[str], bool] = lambda name: False,
    ) -> None:
        super().__init__(cudart, device_count, max_regions=max_regions, max_bytes=max_bytes, taken=taken)
        self._track(book, "CUDA shared memory")

    def has(self, name: str) -> bool:
        return self._book.get(name) is not None

    def register(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None:
        self._refresh()  # a mapping here of a name unregistered through another worker goes first
        region = self._open(name, raw_handle, device_id, byte_size)
        entry = CudaEntry(name, raw_handle.hex(), device_id, byte_size, uuid.uuid4().hex)
        try:
            self._book.add(entry, self.max_regions, self.max_bytes, taken=self._taken)  # the server's
            with self._lock:
                self._named(name, region)
                self._ids[name] = entry.id
            self._still_booked(name, entry.id)  # (not: an Unregister came after this Register)
        except BaseException:  # a failed Register leaves nothing: its mapping, and its entry only
            with self._lock:
                self._named(name, None)
                if self._regions.get(name) is region:
                    self._forget(name)
            del region  # (its finalizer closes it once no request holds it)
            self._book.remove(name, only_id=entry.id)  # (not booked, or the name registered again)
            raise

    def status(self, name: str) -> Sequence[CudaRegionInfo]:
        entries = pick({e.name: e for e in self._book.entries()}, name, "cuda")
        return [CudaRegionInfo(e.name, e.device_id, e.byte_size) for e in entries]

    def unregister(self, name: str) -> None:
        self._unbook(name)

    def lookup(self, name: str) -> CudaRegion | None:
        """The named region as the book has it now, mapped here the first time."""

        def open_entry(entry: CudaEntry) -> CudaRegion:
            return self._open(name, bytes.fromhex(entry.handle), entry.device_id, entry.byte_size, verb="map")

        def add(region: CudaRegion, entry: CudaEntry) -> None:
            self._regions[name] = region
            self._ids[name] = entry.id

        # (a mapping not kept is closed as it goes)
        return self._looked_up(name, open_entry, add, lambda region: None)

    def close(self) -> None:
        """At this worker's shutdown: its mappings go (with their last holders); the registrations
        stay the server's, for the other workers."""
        self._stop_tracking()
        with self._lock:
            self._regions.clear()
            self._ids.clear()
        self._book.close()


def cuda_book_registry(
    share_dir: Path | None, *, max_regions: int, max_bytes: int, taken: Callable[[str], bool]
) -> BookRegistry | None:
    """Under --workers (a share directory), what makes the workers' CUDA registry once the runtime
    answers; None in one process."""
    if share_dir is None:
        return None

    def make(cudart: CudaRuntime, device_count: int) -> CudaWorkersRegistry:
        book = ShmBook(share_dir, CudaEntry, KIND)
        return CudaWorkersRegistry(
            book, cudart, device_count, max_regions=max_regions, max_bytes=max_bytes, taken=taken
        )

    return make


def cuda_registry(
    settings: ServerSettings, providers: Sequence[str], taken: Callable[[str], bool]
) -> CudaSharedMemory:
    """The server's CUDA shared memory (cuda_shm.cuda_shared_memory), every worker's under
    --workers; `taken`: whether a system region has a name."""
    regions, size = settings.max_shm_regions, settings.max_shm_bytes
    booked = cuda_book_registry(settings.rollout_share_dir, max_regions=regions, max_bytes=size, taken=taken)
    allowed = settings.allow_client_shm
    return cuda_shared_memory(
        providers, allowed=allowed, max_regions=regions, max_bytes=size, taken=taken, book_registry=booked
    )
