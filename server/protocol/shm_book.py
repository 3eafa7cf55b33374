"""Under `--workers N`: the system shared-memory registrations every worker sees, kept as files in
the workers' share directory (the `--workers` parent's, mode 0700, removed when it exits).

A client's connections reach different workers (SO_REUSEPORT), so a region registered through one
was unknown to the others, and client shared memory needed one server process. Here a registration
is an entry file, written whole and renamed into place, its name a hash of the region's; Status
reads the entries; Unregister removes them and bumps a counter every worker maps. A worker maps a
region the first time one of its requests names it (shared_memory.py), and checks its mappings
against the entries again only after the counter moved: a request's lookup is one read of it.

A registration is the object the registering worker opened, as in one process (and Triton): the
others open that worker's descriptor (/proc/<pid>/fd/<n>), checked by device and inode, so an
object the client unlinked (or replaced under the same key) after Register is still the one read.
Where that cannot be opened, the key is, and used only if it is still the same object.

Register and Unregister hold an exclusive flock on `lock` (a fresh open per call, so threads of one
process exclude each other too): one name is registered once across the workers, and the limits
(max_shm_regions, max_shm_bytes) are the server's, not each worker's.

CUDA regions under --workers (cuda_shm_workers.py) are entries of their own kind in the same
directory: the same lock (a name is one region's, of either kind, across the workers), the same
counter, their own files (`cuda-*`) and limits.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import mmap
import os
import struct
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from server.errors import InvalidRequest, RegionExists
from server.protocol.shm_regions import Region, map_opened, mapped_bytes, object_name, refuse_if_out_of_files
from server.shm_regions_book import over_limit

BOOK_DIR = "shm"
REFRESH_S = 0.5  # how soon a worker lets go of a region unregistered through another, unasked
_COUNTER = struct.Struct("=Q")


@dataclass(frozen=True, slots=True)
class Entry:
    """One registration: the region's name, its object's key, where in it, the bytes its mapping
    takes (what max_shm_bytes counts), an id that tells a re-registration from the one before, and
    the object as registered: the registering worker's pid and descriptor, the object's identity."""

    name: str
    key: str
    offset: int
    byte_size: int
    mapped: int
    id: str
    pid: int
    fd: int
    device: int
    inode: int

    @property
    def counted(self) -> int:
        return self.mapped


class BookEntry(Protocol):
    """What the book reads of any kind of entry (a dataclass, written as JSON): its name, its id,
    the bytes its limit counts."""

    __dataclass_fields__: ClassVar[dict[str, Any]]

    @property
    def name(self) -> str: ...

    @property
    def id(self) -> str: ...

    @property
    def counted(self) -> int: ...


E = TypeVar("E", bound=BookEntry)


class ShmBook(Generic[E]):
    """The registrations of every worker, of one kind (`entry_type`, its files `kind`-*), in
    `share_dir`/shm."""

    def __init__(self, share_dir: Path, entry_type: type[E], kind: str) -> None:
        self._dir = share_dir / BOOK_DIR
        self._dir.mkdir(mode=0o700, exist_ok=True)
        self._entry_type = entry_type
        self._kind = kind
        self._what = "CUDA shared memory" if kind == "cuda" else "system shared memory"
        self._lock_path = self._dir / "lock"
        counter = self._dir / "generation"
        fd = os.open(counter, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(fd).st_size < _COUNTER.size:
                os.ftruncate(fd, _COUNTER.size)  # (every worker may: it only ever grows to 8 zeros)
            self._counter = mmap.mmap(fd, _COUNTER.size)
        finally:
            os.close(fd)

    def generation(self) -> int:
        """Moves at every Unregister of any worker (a mapping this worker holds may be stale)."""
        return int(_COUNTER.unpack_from(self._counter)[0])

    def add(
        self, entry: E, max_regions: int, max_bytes: int, taken: Callable[[str], bool] = lambda name: False
    ) -> None:
        """Record `entry`: RegionExists when its name is registered (through any worker; `taken`:
        as the other kind of region, read under the same lock), SharedMemoryLimit when the server's
        regions of this kind would pass a limit."""
        with self._locked():
            entries = self.entries()
            if any(e.name == entry.name for e in entries) or taken(entry.name):  # Triton's wording
                raise RegionExists(f"shared memory region '{entry.name}' already in manager")
            live = (len(entries), sum(e.counted for e in entries))
            what = f"{'CUDA ' if self._kind == 'cuda' else ''}shared memory region '{entry.name}'"
            regions = "CUDA regions" if self._kind == "cuda" else "regions"
            refused = over_limit(what, entry.counted, live, max_regions, max_bytes, regions)
            if refused is not None:
                raise refused
            temporary = self._dir / f".new-{entry.id}"
            temporary.write_text(json.dumps(asdict(entry)))
            os.replace(temporary, self._path(entry.name))  # whole or absent to a reader

    def remove(self, name: str, only_id: str | None = None) -> None:
        """Forget the named region (every region when `name` is empty); unknown names are fine.
        `only_id`: only if the name's entry is still that one (a failed Register's own)."""
        with self._locked():
            paths = list(self._entry_paths()) if not name else [self._path(name)]
            current = self.get(name) if only_id is not None else None
            if only_id is not None and (current is None or current.id != only_id):
                paths = []
            gone = 0
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    gone += 1
            if gone:
                _COUNTER.pack_into(self._counter, 0, self.generation() + 1)

    def get(self, name: str) -> E | None:
        entry = _read(self._path(name), self._entry_type, self._what)
        return entry if entry is not None and entry.name == name else None

    def entries(self) -> list[E]:
        found = (_read(path, self._entry_type, self._what) for path in self._entry_paths())
        return sorted((e for e in found if e is not None), key=lambda e: e.name)

    def stale(self, mapped: Mapping[str, str]) -> list[str]:
        """Of `mapped` (a worker's mappings: name -> the entry id each is), those whose entry is gone
        or is a later registration of the name."""
        stale = []
        for name, entry_id in mapped.items():
            entry = self.get(name)
            if entry is None or entry.id != entry_id:
                stale.append(name)
        return stale

    def close(self) -> None:
        with contextlib.suppress(BufferError):
            self._counter.close()

    def _path(self, name: str) -> Path:
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()
        return self._dir / f"{self._kind}-{digest}"

    def _entry_paths(self) -> Iterator[Path]:
        return self._dir.glob(f"{self._kind}-*")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as err:
            _refuse_if_out_of_files(err, self._what)
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # (the lock goes with it)


def system_book(share_dir: Path) -> ShmBook[Entry]:
    """The book of system regions (files `region-*`)."""
    return ShmBook(share_dir, Entry, "region")


def new_entry(region: Region) -> Entry:
    """The entry of a region this worker has just opened and mapped for a Register."""
    seen = os.fstat(region.fd)
    return Entry(
        region.name, region.key, region.offset, region.byte_size, mapped_bytes(region), uuid.uuid4().hex,
        os.getpid(), region.fd, seen.st_dev, seen.st_ino,
    )  # fmt: skip


def adopt(entry: Entry, directory: Path) -> Region:
    """Map the object `entry` registered (another worker's, or this one's before a refresh dropped
    it): its registering worker's descriptor, else its key while that is still the same object."""
    flags = os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
    fd = _open_same(f"/proc/{entry.pid}/fd/{entry.fd}", flags, entry)  # (a magic link: no O_NOFOLLOW)
    if fd is None:
        fd = _open_same(str(directory / object_name(entry.key)), flags | os.O_NOFOLLOW, entry)
    if fd is None:
        raise InvalidRequest(
            f"shared memory region '{entry.name}': its object '{entry.key}' was removed or replaced "
            "after it was registered, and the worker that registered it no longer holds it"
        )
    return map_opened(fd, entry.name, entry.key, entry.offset, entry.byte_size, registering=False)


def _open_same(path: str, flags: int, entry: Entry) -> int | None:
    """`path` opened if it is the entry's object (device and inode), else None."""
    try:
        fd = os.open(path, flags)
    except OSError as err:
        _refuse_if_out_of_files(err)
        return None
    seen = os.fstat(fd)
    if (seen.st_dev, seen.st_ino) == (entry.device, entry.inode):
        return fd
    os.close(fd)
    return None


def _read(path: Path, entry_type: type[E], what: str) -> E | None:
    try:
        fields = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except OSError as err:
        _refuse_if_out_of_files(err, what)
        raise
    return entry_type(**fields)


def _refuse_if_out_of_files(err: OSError, what: str = "system shared memory") -> None:
    """Out of descriptors reading the book: RESOURCE_EXHAUSTED saying so, not INTERNAL."""
    refuse_if_out_of_files(err, what, "its registrations are files the workers share")
