"""Mutants of server/protocol/shm_regions.py that survived the whole-scope run of 2026-12-05
(tests/MUTANTS.md, forty-eighth session): the refusals' whole texts (a shrunk object, a region
gone under a read, the open-file limit), reads and writes that come back short, the flags the
object is opened with and where the held mapping starts. Real objects in a temporary directory;
only the system calls that cannot be made to come up short or fail on demand are wrapped."""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from server.errors import SharedMemoryLimit
from server.protocol import shm_regions
from server.protocol.shm_regions import Region, RegionGone, map_opened, open_region

OUT_OF_FILES = (
    "Unable to open shared memory region: '/o': the server has no file descriptor left "
    "(its open-file limit, ulimit -n; each registered region holds two)"
)


def region(directory: Path, data: bytes, offset: int = 0, byte_size: int | None = None) -> Region:
    (directory / "o").write_bytes(data)
    size = len(data) - offset if byte_size is None else byte_size
    return open_region("r", "/o", offset, size, directory)


def limited(real: Callable[..., int], first: int, calls: list[int]) -> Callable[..., int]:
    """`real` (pread/pwrite) moving at most `first` bytes on its first call, as a signal can make
    it; a loop that never ends is stopped after a few calls."""

    def call(fd: int, buffers: Any, position: int) -> int:
        calls.append(position)
        if len(calls) > 6:
            raise AssertionError(f"still copying after {len(calls)} calls: {calls}")
        if len(calls) == 1:
            buffers = [memoryview(buffers[0])[:first]] if isinstance(buffers, list) else buffers[:first]
        return real(fd, buffers, position)

    return call


def test_a_shrunk_objects_refusal_names_region_key_size_offset_and_byte_size(tmp_path: Path) -> None:
    """check_size's whole text: a mutant passing None for any of the five parts says 'None'."""
    held = region(tmp_path, bytes(64), offset=8, byte_size=16)
    held.check_size()  # 64 bytes: the region [8, 24) is whole
    os.truncate(tmp_path / "o", 10)
    with pytest.raises(RegionGone) as gone:
        held.check_size()
    assert str(gone.value) == (
        "shared memory region 'r': its object '/o' is now 10 bytes, "
        "less than the registered offset 8 + byte_size 16"
    )


def test_another_workers_mapping_of_a_shrunk_object_names_it_whole(tmp_path: Path) -> None:
    """map_opened, not registering (a region registered before, mapped by another worker): the
    same text as check_size, with the region's name and byte_size, not None."""
    (tmp_path / "o").write_bytes(bytes(10))
    fd = os.open(tmp_path / "o", os.O_RDWR)
    with pytest.raises(RegionGone) as gone:
        map_opened(fd, "r", "/o", 4, 64, registering=False)
    assert str(gone.value) == (
        "shared memory region 'r': its object '/o' is now 10 bytes, "
        "less than the registered offset 4 + byte_size 64"
    )
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)  # taken over, and closed on the refusal


def test_a_read_that_finds_the_object_shrunk_and_regrown_names_the_region_and_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The object truncated under the pread and grown back before check_size looks: the read
    still fails, with its own text (RegionGone(None) would say 'None')."""
    held = region(tmp_path, bytes(range(64)))
    real = os.preadv

    def truncated_meanwhile(fd: int, buffers: list[memoryview], position: int) -> int:
        os.truncate(tmp_path / "o", 0)
        got = real(fd, buffers, position)
        os.truncate(tmp_path / "o", 64)
        return got

    monkeypatch.setattr(shm_regions.os, "preadv", truncated_meanwhile)
    with pytest.raises(RegionGone) as gone:
        held.read(8, 4)
    assert str(gone.value) == "shared memory region 'r': its object '/o' shrank"


def test_a_short_read_is_continued_where_it_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pread may return fewer bytes than asked: `done = got` would restart below what it had and
    never finish."""
    held = region(tmp_path, bytes(range(64)), offset=16, byte_size=32)
    calls: list[int] = []
    monkeypatch.setattr(shm_regions.os, "preadv", limited(os.preadv, 3, calls))
    assert bytes(held.read(4, 8)) == bytes(range(20, 28))
    assert calls == [20, 23]  # the second read starts where the first stopped


def test_a_short_write_is_continued_where_it_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pwrite may write fewer bytes than given: the rest goes right after them (not `offset -
    done`, below the region's bytes), and the count adds up (`done = ...` would loop forever)."""
    held = region(tmp_path, bytes(64), offset=16, byte_size=32)
    calls: list[int] = []
    monkeypatch.setattr(shm_regions.os, "pwrite", limited(os.pwrite, 3, calls))
    held.write(4, np.arange(1, 9, dtype=np.uint8))
    assert calls == [20, 23]
    assert (tmp_path / "o").read_bytes() == bytes(20) + bytes(range(1, 9)) + bytes(36)


def test_the_object_is_opened_non_blocking(tmp_path: Path) -> None:
    """O_NONBLOCK (with O_NOCTTY: a FIFO or device swapped in between the checks must not block
    or capture the open) stays on the descriptor; dropping it by `&` for `|` shows there."""
    held = region(tmp_path, bytes(64))
    assert fcntl.fcntl(held.fd, fcntl.F_GETFL) & os.O_NONBLOCK
    assert not os.get_inheritable(held.fd)


def test_the_held_mapping_starts_at_the_page_below_the_offset(tmp_path: Path) -> None:
    """mmap's offset is the page below the region's: without it the mapping would hold the
    object's first pages instead of the region's (same length, other bytes)."""
    page = mmap.ALLOCATIONGRANULARITY
    data = bytes(i % 251 for i in range(3 * page))
    held = region(tmp_path, data, offset=page + 8, byte_size=16)
    assert len(held.mapping) == 8 + 16
    assert bytes(held.mapping[8:24]) == data[page + 8 : page + 24]


@pytest.mark.parametrize("call", ["open", "mmap"])
def test_running_out_of_files_names_the_key_and_why_a_region_takes_two(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    """The open-file limit at the open or at the mmap (which duplicates the descriptor): the
    whole text, with the key (not None) and the note on the two descriptors a region holds."""

    def out_of_files(*args: object, **kwargs: object) -> Any:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    (tmp_path / "o").write_bytes(bytes(64))
    monkeypatch.setattr(shm_regions.os if call == "open" else shm_regions.mmap, call, out_of_files)
    with pytest.raises(SharedMemoryLimit) as refused:
        open_region("r", "/o", 0, 64, tmp_path)
    assert str(refused.value) == OUT_OF_FILES
