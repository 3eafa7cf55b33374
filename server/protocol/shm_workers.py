"""Under `serve --workers N`: the system shared-memory registry over the book every worker reads
(shm_book.py), so a region is the server's, not a worker's.

Register writes the book's entry (one name across the workers, the server's limits), then keeps the
mapping it opened: its descriptor is the one the entry names, which the other workers open. A
worker maps a region the first time one of its requests names it (`_local`). An Unregister through
any worker removes the entry and moves the book's counter; each worker checks its mappings against
the entries when the counter has moved, at a lookup or within REFRESH_S on its own
(booked_mappings.py, shared with the CUDA regions' registry). A
mapping is kept only if its entry is still booked after it was added (`_still_booked`): an
Unregister landing in between moved the counter before there was a mapping to check.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from server.protocol.booked_mappings import BookedMappings
from server.protocol.shared_memory import RegionInfo, SharedMemoryRegistry, close_unseen
from server.protocol.shm_book import REFRESH_S, Entry, ShmBook, adopt, new_entry, system_book
from server.protocol.shm_regions import SHM_DIR, Region, open_region
from server.shm_regions_book import pick

if TYPE_CHECKING:
    from server.settings import ServerSettings

__all__ = ["REFRESH_S", "WorkersRegistry", "system_registry"]


class WorkersRegistry(BookedMappings[Entry, Region], SharedMemoryRegistry):
    """A worker's registry whose registrations are the book's (every worker's)."""

    def __init__(
        self,
        book: ShmBook[Entry],
        *,
        allowed: bool,
        max_regions: int,
        max_bytes: int,
        directory: Path = SHM_DIR,
    ) -> None:
        super().__init__(allowed=allowed, max_regions=max_regions, max_bytes=max_bytes, directory=directory)
        self._track(book, "system shared memory")

    def has(self, name: str) -> bool:
        return self._book.get(name) is not None

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self._check_new(name)
        region = open_region(name, key, offset, byte_size, self._directory)
        entry = new_entry(region)
        try:
            # One name (either kind) across the workers, the server's limits.
            self._book.add(entry, self.max_regions, self.max_bytes, taken=self._device_has)
        except BaseException:
            close_unseen(region)
            raise
        kept = False
        try:
            self._refresh()
            # A mapping of the name held here is stale (the book had no entry), or this very entry
            # mapped meanwhile by a request here: either way the Register's own goes in, since its
            # descriptor is the one the entry names (closing it had left the others the key only).
            self._keep(region, replace=True, tag=entry.id)  # (refused: closed, and raised)
            kept = True
            self._still_booked(name, entry.id)  # (not: an Unregister came after this Register)
        except BaseException:  # a failed Register leaves nothing: its mapping, and its entry only
            if kept:  # (its finalizer closes it once no request holds it)
                with self._lock:
                    if self._regions.get(name) is region:
                        self._forget(name)
            elif not region.mapping.closed:
                close_unseen(region)
            self._book.remove(name, only_id=entry.id)  # (the name may be registered again since)
            raise

    def status(self, name: str) -> Sequence[RegionInfo]:
        entries = pick({e.name: e for e in self._book.entries()}, name, "system")
        return [RegionInfo(e.name, e.key, e.offset, e.byte_size) for e in entries]

    def unregister(self, name: str) -> None:
        self._check_allowed()
        self._unbook(name)

    def _local(self, name: str) -> Region | None:
        """The named region as the book has it now, mapped here the first time (the object as
        registered, not the key again)."""

        def keep(region: Region, entry: Entry) -> None:
            self._keep(region, replace=True, verb="map", tag=entry.id)

        return self._looked_up(name, lambda entry: adopt(entry, self._directory), keep, close_unseen)

    def _admitted(self, name: str, tag: str) -> None:
        self._ids[name] = tag

    def _forget(self, name: str) -> None:
        BookedMappings._forget(self, name)  # (not the base registry's: the entry id goes too)

    def close(self) -> None:
        self._stop_tracking()
        super().close()
        self._book.close()


def system_registry(settings: ServerSettings) -> SharedMemoryRegistry:
    """The server's registry: under --workers over the book in the parent's share directory."""
    shared = settings.rollout_share_dir if settings.allow_client_shm else None
    regions, size = settings.max_shm_regions, settings.max_shm_bytes
    if shared is None:
        return SharedMemoryRegistry(allowed=settings.allow_client_shm, max_regions=regions, max_bytes=size)
    return WorkersRegistry(system_book(shared), allowed=True, max_regions=regions, max_bytes=size)
