"""The model memory budget: who is resident, how many bytes each holds, who goes first.

Pure bookkeeping (no I/O, no clock of its own): server/models/lazy.py measures footprints and
unloads the models chosen here, so the eviction rule is unit-tested with made-up sizes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass
class Resident:
    """One loaded model as the budget counts it."""

    name: str
    bytes: int
    pinned: bool  # never evicted: a model that is not lazy, or has the `pinned` parameter
    last_used: float  # time.monotonic() of its latest request (or its load)


class MemoryBudget:
    """Resident models' bytes against a limit; eviction candidates in least-recently-used order."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes  # 0: no limit
        self._residents: dict[str, Resident] = {}
        # Each model's latest measured footprint and what it was measured loading (its files and
        # config): kept through an eviction, so a reload of the same files is judged by it (the
        # files' size had been the estimate again, and a reload could pass the budget).
        self._measured: dict[str, tuple[object, int]] = {}

    @property
    def used_bytes(self) -> int:
        return sum(r.bytes for r in self._residents.values())

    def residents(self) -> list[Resident]:
        return list(self._residents.values())

    def record(self, name: str, size: int, *, pinned: bool, now: float) -> None:
        """A model was (re)loaded and now holds `size` bytes."""
        self._residents[name] = Resident(name, max(size, 0), pinned, now)

    def forget(self, name: str) -> None:
        """Not resident now (unloaded, evicted); its measured footprint is kept."""
        self._residents.pop(name, None)

    def drop(self, name: str) -> None:
        """Gone from the repository: nothing of it is kept."""
        self._residents.pop(name, None)
        self._measured.pop(name, None)

    def remember(self, name: str, key: object, size: int) -> None:
        """`size` bytes were measured loading `key` (server/models/footprint.py source_key)."""
        self._measured[name] = (key, max(size, 0))

    def measured(self, name: str, key: object) -> int | None:
        """The footprint measured at `name`'s latest load if that load read `key`, else None."""
        known = self._measured.get(name)
        return known[1] if known is not None and known[0] == key else None

    def touch(self, name: str, now: float) -> None:
        resident = self._residents.get(name)
        if resident is not None:
            resident.last_used = now

    def size_of(self, name: str) -> int | None:
        resident = self._residents.get(name)
        return None if resident is None else resident.bytes

    def victims(
        self, need_bytes: int, busy: Callable[[str], bool], keep: str = "", best_effort: bool = False
    ) -> list[str] | None:
        """The models to evict so that `need_bytes` more fit, least recently used first; [] when
        they fit already, None when evicting every idle unpinned model would not make room (with
        `best_effort`, every one of them then: a model already loaded over the budget).

        `keep` (the model being loaded) and busy models (requests queued or running) are never
        chosen; its own current bytes are not counted (a reload replaces them)."""
        if self.limit_bytes <= 0:
            return []
        used = self.used_bytes - (self.size_of(keep) or 0)
        if used + need_bytes <= self.limit_bytes:
            return []
        chosen: list[str] = []
        candidates = sorted(
            (r for r in self._residents.values() if not r.pinned and r.name != keep and not busy(r.name)),
            key=lambda r: r.last_used,
        )
        for resident in candidates:
            chosen.append(resident.name)
            used -= resident.bytes
            if used + need_bytes <= self.limit_bytes:
                return chosen
        return chosen if best_effort else None


def refusal(name: str, need: int, basis: str, budget: MemoryBudget) -> str:
    """Why loading `name` (`need` bytes, estimated from `basis`) is refused under `budget`: more
    than the whole budget (no eviction could ever make room: had said "no idle lazy model to
    evict"), or more than evicting what may be evicted now would free."""
    limit = budget.limit_bytes
    if need > limit:
        why = f", {basis}" if basis else ""
        return (
            f"loading model '{name}' needs {need} bytes (about {need / MIB:.1f} MiB{why}), more than "
            f"the whole memory budget: model_memory_budget_mb is {limit / MIB:g} ({limit} bytes; set "
            "by --model-memory-budget-mb or SLUICEWAY_MODEL_MEMORY_BUDGET_MB)"
        )
    free, why = max(limit - budget.used_bytes, 0), f" ({basis})" if basis else ""
    return (
        f"loading model '{name}' needs about {need / MIB:.1f} MiB{why}: model_memory_budget_mb "
        f"({limit / MIB:g}) has {free / MIB:.1f} MiB free and no idle lazy model to evict "
        "(pinned models and models with requests in flight stay)"
    )
