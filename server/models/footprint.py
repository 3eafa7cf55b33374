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
from collections.abc import Callable, Collection, Mapping, Sequence
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
    return sum(version_files(source).values())


def version_files(source: ModelSource) -> dict[int, int]:
    """Bytes of each selected version directory's files."""
    return {number: _version_bytes(model_file) for number, model_file in source.versions.items()}


def _version_bytes(model_file: Path) -> int:
    if model_file.is_dir():  # an ensemble's or identity model's version: no model file
        version_dir = model_file
    elif model_file.parent.name.isdigit():
        version_dir = model_file.parent
    elif model_file.parent.parent.name.isdigit():  # <version>/model.onnx/model.onnx: a directory
        version_dir = model_file.parent.parent
    else:  # never walk a tree that is not a version directory
        return model_file.stat().st_size
    return sum(path.stat().st_size for path in version_dir.rglob("*") if path.is_file())


def source_key(source: ModelSource) -> tuple[object, ...]:
    """What a load of `source` reads (its config, and every version's files with their sizes and
    times): a footprint measured for one key is the estimate for the next load with that key."""
    return tuple(version_fingerprint(source, number) for number in sorted(source.versions))


def footprint(files: int, before: int, after: int) -> int:
    """A model's estimated bytes: the memory its load added, at least its files' size."""
    return max(files, after - before)


def files_and_key(source: ModelSource) -> tuple[dict[int, int], tuple[object, ...]]:
    """The bytes of a load's files by version, and what its measured footprint is remembered under."""
    return version_files(source), source_key(source)


class LoadMeasure:
    """One load's footprint at a time (ModelLoads serializes loads), from what each version took.

    The manager says when a load's versions are up and the replaced not yet retired (`loaded`),
    and which served on (kept). The growth until then is what the fresh versions took, shared
    among them by their files' bytes; a kept version counts what it took at its own load. Measured
    after the retirement, against the bytes the model was counted for, each reload carried that
    count's error into the next, and the few KB a process keeps of a reload were charged to the
    model for ever: 600 reloads changing its config took a 2.3 MiB model to 4.5 MiB, and versions
    added and removed in poll mode, or one swapped beside another, grew 15-20 KB each until lazy
    models were refused or evicted for room (two testers, session 55)."""

    def __init__(self, in_use: Callable[[], int]) -> None:
        self._in_use = in_use
        self._shares: dict[str, dict[int, int]] = {}  # per loaded model, what each version took
        self._name, self._before = "", 0
        self._held: int | None = None
        self._seen: tuple[int, frozenset[int], frozenset[int]] | None = None  # in use, kept, all

    def start(self, name: str, held: int | None) -> None:
        """`name`'s load begins; `held`: the bytes it is counted for now (None: not loaded)."""
        self._name, self._before, self._held, self._seen = name, self._in_use(), held, None

    def loaded(self, kept: Collection[int], versions: Collection[int]) -> None:
        """The manager's word: the load's `versions` are up (`kept` served on), the replaced not
        yet retired. The first only: the ensembles loaded again after the model come later."""
        if self._seen is None:
            self._seen = (self._in_use(), frozenset(kept), frozenset(versions))

    def size(self, files: Mapping[int, int]) -> int:
        """The load's footprint (its files' bytes at least), each version's share kept."""
        shares, seen = self._shares.get(self._name, {}), self._seen
        if seen is None or not seen[1] <= shares.keys():  # a kept version's share unknown: as before
            total = footprint(sum(files.values()), self._before - (self._held or 0), self._in_use())
            self._shares[self._name] = _split(total, list(files), files)
            return total
        at, kept, versions = seen
        grown = _split(max(0, at - self._before), sorted(versions - kept), files)
        self._shares[self._name] = {**{n: shares[n] for n in kept}, **grown}
        return max(sum(files.values()), sum(self._shares[self._name].values()))

    def forget(self, name: str) -> None:
        """`name` was unloaded or evicted: its next load is a fresh one."""
        self._shares.pop(name, None)


def _split(total: int, versions: Sequence[int], files: Mapping[int, int]) -> dict[int, int]:
    """`total` bytes shared among `versions` by their files' bytes (alike where they have none)."""
    if not versions:
        return {}
    weights = sum(files.get(n, 0) for n in versions)
    return {n: total * files.get(n, 0) // weights if weights else total // len(versions) for n in versions}
