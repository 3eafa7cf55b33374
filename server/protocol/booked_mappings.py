"""A worker's mappings of regions the workers' book holds (shm_book.py): which entry each mapping
is, and when one goes. Shared by the system regions' registry (shm_workers.py) and the CUDA one
(cuda_shm_workers.py), which keep their mappings in `_regions` under `_lock` and map a region the
first time one of their requests names it.

A mapping goes when the book's counter has moved (an Unregister through any worker) and its entry
is gone or is a later registration of the name: at a lookup, or within REFRESH_S (server/periodic.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from server.periodic import Periodic
from server.protocol.shm_book import REFRESH_S, BookEntry, ShmBook

E = TypeVar("E", bound=BookEntry)
R = TypeVar("R")


class BookedMappings(Generic[E, R]):
    """Mixed into a registry with `_lock` (reentrant) and `_regions` (name -> mapping)."""

    _lock: threading.RLock
    _regions: dict[str, R]

    def _track(self, book: ShmBook[E], what: str) -> None:
        """Start following `book` (in the registry's __init__, after the base class's)."""
        self._book = book
        self._ids: dict[str, str] = {}  # the book's entry each mapping here is
        self._seen = book.generation()
        # (`_refresh` looked up at each call: tests wrap it)
        self._watch = Periodic(lambda: self._refresh(), REFRESH_S, f"{what}: the book's check")

    def _current(self, name: str) -> tuple[R | None, E | None]:
        """This worker's mapping of `name` if it is still the book's; else the book's entry to map
        (None when nothing is registered under the name)."""
        seen = self._seen  # (read before the dict: a refresh drops mappings, then moves it)
        region = self._regions.get(name)
        if region is not None and self._book.generation() == seen:
            return region, None
        self._refresh()
        region = self._regions.get(name)
        if region is not None:
            return region, None
        return None, self._book.get(name)

    def _unbook(self, name: str) -> None:
        """An Unregister through this worker: the entry (every entry, for "") and its mapping here."""
        self._book.remove(name)
        with self._lock:
            for gone in [name] if name else list(self._regions):
                self._forget(gone)

    def _forget(self, name: str) -> None:
        """Drop this worker's mapping of `name` (requests that resolved it hold on to it)."""
        with self._lock:
            self._regions.pop(name, None)
            self._ids.pop(name, None)

    def _looked_up(
        self,
        name: str,
        open_entry: Callable[[E], R],
        add: Callable[[R, E], None],
        unused: Callable[[R], None],
    ) -> R | None:
        """The named region as the book has it now, mapped here the first time: `open_entry` opens
        the entry's, then `add` keeps it under the lock, unless a mapping held here stands instead
        (`unused` lets the new one go). Looked up once more when its entry went meanwhile (the name
        may have been registered again)."""
        for _ in range(2):
            region, entry = self._current(name)
            if entry is None:
                return region
            opened = open_entry(entry)
            with self._lock:  # (reentrant) the check and the add as one, against a Register here
                held = self._held_instead(name, entry.id)
                if held is not None:
                    unused(opened)
                    return held
                add(opened, entry)
            if self._still_booked(name, entry.id):
                return opened
        return None

    def _held_instead(self, name: str, entry_id: str) -> R | None:
        """Under `_lock`, before a lookup adds its mapping of entry `entry_id`: the mapping of `name`
        held here that stands instead, if any: the same entry (mapped by another request here), or
        the book's current registration of the name (a Register through this worker while the
        lookup opened an older entry's). Replaced, that Register's own mapping had gone, and with it
        its descriptor, the one its entry names; then the lookup's, stale, was dropped too, so a
        registered name answered NOT_FOUND here (a reviewer's mutation run)."""
        held = self._regions.get(name)
        if held is None:
            return None
        held_id = self._ids.get(name)
        if held_id == entry_id:
            return held
        current = self._book.get(name)
        return held if current is not None and current.id == held_id else None

    def _still_booked(self, name: str, entry_id: str) -> bool:
        """After a mapping is added: whether the book still has its entry; if not, the mapping goes.
        An Unregister between reading the entry and adding the mapping moved the counter before the
        mapping was there to be checked, so no refresh would ever drop it: a tester's Register
        racing another worker's Unregister left the old object served, for good, by one worker
        (189 of 9,606 rounds the Unregister won)."""
        entry = self._book.get(name)
        if entry is not None and entry.id == entry_id:
            return True
        with self._lock:
            if self._ids.get(name) == entry_id:
                self._forget(name)
        return False

    def _refresh(self) -> None:
        """After an Unregister anywhere (the counter moved), drop the mappings whose entry is gone or
        new (requests holding one keep it)."""
        generation = self._book.generation()  # (read first: an Unregister after it moves it again)
        if generation == self._seen:
            return
        with self._lock:
            for mapped in self._book.stale(dict(self._ids)):
                self._forget(mapped)
            self._seen = generation

    def _stop_tracking(self) -> None:
        """At close: the watch ends (before the book's counter is unmapped)."""
        self._watch.close(5 * REFRESH_S)
