"""One registered system shared-memory region: a POSIX shm object under /dev/shm, mapped read-write.

The key is checked the way glibc's shm_open reads it (leading slashes dropped; no '/' inside), and
more strictly: no '.' or '..', no NUL, at most NAME_MAX bytes; the object must be a regular file
directly in the shm directory, opened with O_NOFOLLOW and matched (device, inode) against the
lstat that was checked, so a symlink or a file swapped in between is refused. The mapping starts
at the page below `offset` (mmap needs page-aligned offsets; Triton's does not allow others), and
a request sees only [offset, offset + byte_size) of it.

The mapping is what a registration holds (its pages are what max_shm_bytes counts, and a request
in flight keeps it, and so the descriptor, alive), but data never moves through it: tensors are
read with pread and written with pwrite on the descriptor. A client that truncates its object makes
a touch of the mapping past the new end a SIGBUS, which kills the server; a size check before the
touch cannot close that race (a tester's loop shrinking and regrowing the object killed the server
between check and copy, on the input and the output path). pread past the end comes up short, and
the request is refused with RegionGone.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from server.errors import InvalidRequest, SharedMemoryLimit

SHM_DIR = Path("/dev/shm")
NAME_MAX = 255


class RegionGone(InvalidRequest):
    """The shm object behind a region shrank below it after registration."""


def object_name(key: str) -> str:
    """The file name under the shm directory that `key` names; InvalidRequest if it names none."""
    name = key.lstrip("/")  # as glibc's shm_open: "/a" and "a" are the same object
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise InvalidRequest(
            f"invalid shm key '{key[:300]}': a POSIX shared-memory name is one path component "
            "(an optional leading '/', then no '/', NUL, '.' or '..')"
        )
    if len(name.encode("utf-8", "surrogatepass")) > NAME_MAX:
        raise InvalidRequest(f"invalid shm key: longer than {NAME_MAX} bytes")
    return name


class SharedRegion(Protocol):
    """A region a request reads inputs from and writes outputs to: a system one (Region, below)
    or a CUDA one (server/backends/cuda_shm.py); `read` copies the bytes out of either."""

    @property
    def name(self) -> str: ...

    @property
    def byte_size(self) -> int: ...

    def check_size(self) -> None: ...

    def read(self, offset: int, byte_size: int) -> np.ndarray: ...

    def write(self, offset: int, data: np.ndarray) -> None: ...


@dataclass(eq=False)
class Region:
    """A mapped region. Requests hold it while they use it; the mapping is released (munmap) when
    the registry and the last request have let go of it (see SharedMemoryRegistry)."""

    name: str
    key: str
    offset: int
    byte_size: int
    fd: int
    mapping: mmap.mmap  # held, never touched (see the module's docstring)

    def check_size(self) -> None:
        """Refuse use of a region whose object was truncated below it: touching pages past the
        end of a shm object is SIGBUS, which would kill the server."""
        size = os.fstat(self.fd).st_size
        if size < self.offset + self.byte_size:
            raise shrunk(self.name, self.key, size, self.offset, self.byte_size)

    def read(self, offset: int, byte_size: int) -> np.ndarray:
        """Bytes [offset, offset + byte_size) of the region, a new uint8 array (pread, not the
        mapping); RegionGone when the object ends before them. The caller has checked the bounds."""
        out = np.empty(byte_size, dtype=np.uint8)
        into = memoryview(out)
        done = 0
        while done < byte_size:
            got = os.preadv(self.fd, [into[done:]], self.offset + offset + done)
            if got <= 0:  # the object was truncated since it was checked
                self.check_size()
                raise RegionGone(f"shared memory region '{self.name}': its object '{self.key}' shrank")
            done += got
        return out

    def write(self, offset: int, data: np.ndarray) -> None:
        """`data` (uint8) into bytes [offset, offset + data.size) (pwrite, not the mapping: an object
        truncated meanwhile grows back rather than killing the server); the caller has checked the
        bounds and the object's size."""
        source = memoryview(np.ascontiguousarray(data)).cast("B")
        done = 0
        while done < len(source):
            done += os.pwrite(self.fd, source[done:], self.offset + offset + done)


def open_region(name: str, key: str, offset: int, byte_size: int, directory: Path = SHM_DIR) -> Region:
    """Open, check and map `key`'s object; InvalidRequest naming what is wrong."""
    file_name = object_name(key)
    if byte_size <= 0:
        raise InvalidRequest(f"failed to register shared memory region '{name}': byte_size must be > 0")
    path = directory / file_name
    try:
        seen = os.lstat(path)
    except FileNotFoundError:
        raise InvalidRequest(f"Unable to open shared memory region: '{key}' (no such object)") from None
    if not stat.S_ISREG(seen.st_mode):  # symlinks, directories, FIFOs and devices never opened
        raise InvalidRequest(f"Unable to open shared memory region: '{key}' is not a regular file")
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        _refuse_if_out_of_files(exc, key)
        reason = (
            "permission denied" if exc.errno in (errno.EACCES, errno.EPERM) else os.strerror(exc.errno or 0)
        )
        raise InvalidRequest(f"Unable to open shared memory region: '{key}' ({reason})") from None
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (seen.st_dev, seen.st_ino) or not stat.S_ISREG(opened.st_mode):
            raise InvalidRequest(f"Unable to open shared memory region: '{key}' changed while it was opened")
    except BaseException:
        os.close(fd)
        raise
    return map_opened(fd, name, key, offset, byte_size, registering=True)


def map_opened(fd: int, name: str, key: str, offset: int, byte_size: int, *, registering: bool) -> Region:
    """Map an opened object's region, which takes over `fd` (closed on failure). Too small for it:
    a registration's refusal, or (a region registered before, mapped by another worker) RegionGone."""
    try:
        size = os.fstat(fd).st_size
        if offset + byte_size > size and registering:
            raise InvalidRequest(
                f"failed to register shared memory region '{name}': offset {offset} + byte_size "
                f"{byte_size} is beyond the end of '{key}' ({size} bytes)"
            )
        if offset + byte_size > size:
            raise shrunk(name, key, size, offset, byte_size)
        map_offset = offset - offset % mmap.ALLOCATIONGRANULARITY
        mapping = mmap.mmap(fd, offset + byte_size - map_offset, mmap.MAP_SHARED, offset=map_offset)
    except OSError as exc:  # mmap duplicates the descriptor: the open-file limit can stop it too
        os.close(fd)
        _refuse_if_out_of_files(exc, key)
        raise
    except BaseException:
        os.close(fd)
        raise
    return Region(name, key, offset, byte_size, fd, mapping)


def shrunk(name: str, key: str, size: int, offset: int, byte_size: int) -> RegionGone:
    return RegionGone(
        f"shared memory region '{name}': its object '{key}' is now {size} bytes, "
        f"less than the registered offset {offset} + byte_size {byte_size}"
    )


def mapped_bytes(region: Region) -> int:
    """Bytes of address space the region's mapping takes (what max_shm_bytes counts)."""
    return len(region.mapping)


def _refuse_if_out_of_files(exc: OSError, key: str) -> None:
    """The server's open-file limit, not the client's region: RESOURCE_EXHAUSTED naming it (it had
    been INTERNAL from mmap, or INVALID_ARGUMENT from open). A region holds two descriptors."""
    what = f"Unable to open shared memory region: '{key}'"
    refuse_if_out_of_files(exc, what, "each registered region holds two")


def refuse_if_out_of_files(exc: OSError, what: str, note: str) -> None:
    """SharedMemoryLimit ("`what`: the server has no file descriptor left ...") when `exc` is the
    server's open-file limit; else nothing (the caller raises `exc` as it is)."""
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        raise SharedMemoryLimit(
            f"{what}: the server has no file descriptor left (its open-file limit, ulimit -n; {note})"
        ) from None
