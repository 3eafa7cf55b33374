"""How many bytes a loaded model holds: its files, and the allocator's growth over its load.

onnxruntime copies the weights into its own buffers and its CPU arena grows on the first runs
(the warm-up runs, when the config has model_warmup); all of it comes from malloc. The bytes malloc
has handed out and not had back (glibc's mallinfo2: every arena's allocated chunks plus its mmapped
ones), measured around load + warm-up, cover weights, arena and session state, and measure the
same on every load of the same files: resnet's loads measured 54.5, 53.3, 53.2, 53.2 MiB.

The process's resident set had been the measure: it counts what a load touched, not what it
holds. The first load of a process paid its one-time costs too (the runtime's code pages, the
parse's transient peak that malloc keeps: 148 MiB for that resnet, 9.5 MiB for a 0.3 MiB MLP), and
a reload after an eviction reused the freed heap and measured 9-30 MiB; so a measured footprint
could not be kept for the next load. Where mallinfo2 is missing (not glibc, or older than 2.33)
the resident set is still the measure. Either is an estimate: allocations of other work during
the load count too, so the model files' size is taken as the floor.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from pathlib import Path

from server.models.repository import ModelSource, version_fingerprint

_STATM = Path("/proc/self/statm")


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (field, ctypes.c_size_t)
        for field in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                      "fordblks", "keepcost")
    ]  # fmt: skip


def rss_bytes() -> int:
    """This process's resident set now (0 where /proc is missing: only file sizes count then)."""
    try:
        resident_pages = int(_STATM.read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def heap_meter() -> Callable[[], int] | None:
    """A reader of the bytes malloc has handed out now, or None where the C library has no
    mallinfo2 (not glibc, or glibc before 2.33)."""
    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2
    mallinfo2.argtypes = []

    def heap_bytes() -> int:
        info = mallinfo2()
        return int(info.uordblks + info.hblkhd)  # allocated chunks in every arena + mmapped chunks

    return heap_bytes


def memory_meter() -> Callable[[], int]:
    """What a load's growth is measured with: the heap in use where known, else the resident set."""
    return heap_meter() or rss_bytes


def files_bytes(source: ModelSource) -> int:
    """Bytes of every file in the selected version directories (model files, external weights)."""
    total = 0
    for model_file in source.versions.values():
        if model_file.is_dir():  # an ensemble's or identity model's version: no model file
            version_dir = model_file
        elif model_file.parent.name.isdigit():
            version_dir = model_file.parent
        elif model_file.parent.parent.name.isdigit():  # <version>/model.onnx/model.onnx: a directory
            version_dir = model_file.parent.parent
        else:  # never walk a tree that is not a version directory
            total += model_file.stat().st_size
            continue
        for path in version_dir.rglob("*"):
            if path.is_file():
                total += path.stat().st_size
    return total


def source_key(source: ModelSource) -> tuple[object, ...]:
    """What a load of `source` reads (its config, and every version's files with their sizes and
    times): a footprint measured for one key is the estimate for the next load with that key."""
    return tuple(version_fingerprint(source, number) for number in sorted(source.versions))


def footprint(files: int, before: int, after: int) -> int:
    """A model's estimated bytes: the memory its load added, at least its files' size."""
    return max(files, after - before)


def files_and_key(source: ModelSource) -> tuple[int, tuple[object, ...]]:
    """The bytes of a load's files, and what its measured footprint is remembered under."""
    return files_bytes(source), source_key(source)


class LoadMeasure:
    """One load's footprint at a time (ModelLoads serializes loads). A reload that replaces every
    version is measured when its new versions are up and the old still loaded (the manager's
    `on_replacing`): what the new ones took. Measured after the old ones were retired, against the
    bytes the model was counted for, a reload carried that count's error into the next, and every
    reload that changed the config (a new key: no smallest of several) added the few KB the
    process kept: 600 reloads took a 2.3 MiB model to 4.5 MiB, and lazy models were then refused
    for want of room (a tester, session 55). A reload that keeps some versions is measured the
    old way: the kept ones' share is known only from that count."""

    def __init__(self, in_use: Callable[[], int]) -> None:
        self._in_use = in_use
        self._before = 0
        self._held: int | None = None
        self._replacing: tuple[int, bool] | None = None  # in use then, and whether versions were kept

    def start(self, held: int | None) -> None:
        """A load begins; `held`: the bytes the model is counted for now (None: not loaded)."""
        self._before, self._held, self._replacing = self._in_use(), held, None

    def replacing(self, kept: bool) -> None:
        """A reload's new versions are up, the old not yet retired; `kept`: some versions serve on."""
        if self._replacing is None:  # the model's own: an ensemble reloaded after it comes later
            self._replacing = (self._in_use(), kept)

    def size(self, files: int) -> int:
        """The load's footprint, its files' size at least."""
        if self._replacing is not None and not self._replacing[1]:
            return footprint(files, self._before, self._replacing[0])
        return footprint(files, self._before - (self._held or 0), self._in_use())
