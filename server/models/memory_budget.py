"""The model memory budget: who is resident, how many bytes each holds, who goes first.

Pure bookkeeping (no I/O, no clock of its own): server/models/lazy.py measures footprints and
unloads the models chosen here, so the eviction rule is unit-tested with made-up sizes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from server.errors import MemoryBudgetExceeded, OutgrowsMemoryBudget

MIB = 1024 * 1024
# How many of a model's latest measurements (of the same files) its estimate is drawn from.
KEPT_MEASUREMENTS = 2


@dataclass
class Resident:
    """One loaded model as the budget counts it."""

    name: str
    bytes: int
    pinned: bool  # never evicted: a model that is not lazy, or has the `pinned` parameter
    last_used: float  # time.monotonic() of its latest request (or its load)


@dataclass(frozen=True)
class Measured:
    """What a model's loads of the same files (and config) measured."""

    key: object  # what they read (server/models/footprint.py source_key)
    latest: tuple[int, ...]  # the latest KEPT_MEASUREMENTS, oldest first
    times: int  # loads of these files measured
    # Of the loads measured while no batch ran in any model (quiet): how many, and their smallest
    # (0 while none). Only they make a verdict: another model's run during a load adds to it (its
    # first run's arena chunk: a 0.45 MiB MLP measured 1.5 MiB twice and was refused for good).
    quiet_times: int = 0
    quiet_smallest: int = 0

    @property
    def bytes(self) -> int:
        """The estimate for its next load: the smallest of the latest (other threads' work during
        a load mostly adds; an old figure that it made smaller is forgotten)."""
        return min(self.latest)

    @property
    def basis(self) -> str:
        """Where `bytes` comes from, for a refusal's message."""
        if self.times == 1:
            return "as measured at its last load"
        return f"the smallest of its last {len(self.latest)} loads' measurements"

    def outgrows(self, limit_bytes: int) -> bool:
        """More than `limit_bytes` at every quiet load of these files, two at least: a verdict. A
        figure measured while other models ran may be their allocations; one quiet figure over
        it, or a quiet figure under it ever, is no verdict either."""
        return self.quiet_times >= 2 and self.quiet_smallest > limit_bytes > 0

    def then(self, size: int, quiet: bool) -> Measured:
        """These measurements and `size` bytes measured at a further load of the same files
        (`quiet`: while no batch ran)."""
        latest = (*self.latest, size)[-KEPT_MEASUREMENTS:]
        if not quiet:
            return Measured(self.key, latest, self.times + 1, self.quiet_times, self.quiet_smallest)
        smallest = min(self.quiet_smallest, size) if self.quiet_times else size
        return Measured(self.key, latest, self.times + 1, self.quiet_times + 1, smallest)


class MemoryBudget:
    """Resident models' bytes against a limit; eviction candidates in least-recently-used order."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes  # 0: no limit
        self._residents: dict[str, Resident] = {}
        # Each model's latest measured footprints and what they were measured loading (its files
        # and config): kept through an eviction, so a reload of the same files is judged by them
        # (the files' size had been the estimate again, and a reload could pass the budget). The
        # latest alone had been kept: one load measured while other threads allocated (0.45 MiB
        # MLP measured 1.5) then refused the model for good under a 1 MiB budget.
        self._measured: dict[str, Measured] = {}

    def note(self) -> str:
        """The tail of a log line: "; budget U of L MiB used", or "" without a budget."""
        if self.limit_bytes <= 0:
            return ""
        return f"; budget {self.used_bytes / MIB:.1f} of {self.limit_bytes / MIB:.0f} MiB used"

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

    def remember(self, name: str, key: object, size: int, quiet: bool = True) -> None:
        """`size` bytes were measured loading `key` (server/models/footprint.py source_key);
        `quiet`: no batch of any model ran during the load. The measurements of other files are
        forgotten."""
        size, known = max(size, 0), self.measured(name, key)
        self._measured[name] = (known or Measured(key, (), 0)).then(size, quiet)

    def measured(self, name: str, key: object) -> Measured | None:
        """What `name`'s loads of `key` measured, or None when its latest load read other files."""
        known = self._measured.get(name)
        return known if known is not None and known.key == key else None

    def estimate(self, name: str, key: object) -> int:
        """The bytes `name` is counted for once loaded from `key` (just measured)."""
        known = self.measured(name, key)
        return known.bytes if known else 0

    def touch(self, name: str, now: float) -> None:
        resident = self._residents.get(name)
        if resident is not None:
            resident.last_used = now

    def size_of(self, name: str) -> int | None:
        resident = self._residents.get(name)
        return None if resident is None else resident.bytes

    def victims(
        self, need_bytes: int, kept: Callable[[str], bool], keep: str = "", best_effort: bool = False
    ) -> list[str] | None:
        """The models to evict so that `need_bytes` more fit, least recently used first; [] when
        they fit already, None when evicting every idle unpinned model would not make room (with
        `best_effort`, every one of them then: a model already loaded over the budget).

        `keep` (the model being loaded), models `kept` says stay (requests queued or running, not
        loaded) and models counted at 0 bytes (an ensemble: evicting it frees nothing) are never
        chosen; its own current bytes are not counted (a reload replaces them)."""
        if self.limit_bytes <= 0:
            return []
        used = self.used_bytes - (self.size_of(keep) or 0)
        if used + need_bytes <= self.limit_bytes:
            return []
        chosen: list[str] = []
        candidates = sorted(
            (
                r
                for r in self._residents.values()
                if not r.pinned and r.bytes > 0 and r.name != keep and not kept(r.name)
            ),
            key=lambda r: r.last_used,
        )
        for resident in candidates:
            chosen.append(resident.name)
            used -= resident.bytes
            if used + need_bytes <= self.limit_bytes:
                return chosen
        return chosen if best_effort else None


def load_need(held: int | None, measured: Measured | None, files: int) -> tuple[int, str]:
    """The bytes a model's load is estimated to need, and what the figure rests on (for a
    refusal's message): what loads of these same files measured (each at least their size), else
    its footprint now or the files' size, whichever is larger. The files are the floor: a reload
    of new files (1.2 MiB) had been estimated at the old files' footprint (0.1 MiB) and loaded."""
    if measured is not None:
        return measured.bytes, measured.basis
    if held is not None and held > files:
        return held, "its footprint now"
    return files, "its files' size"


def _sized(nbytes: int) -> str:
    """MiB to one decimal, its bytes too below 1 MiB ("needs 0.3 MiB ... has 0.3 MiB free" had
    read as a contradiction)."""
    return f"{nbytes / MIB:.1f} MiB" if nbytes >= MIB else f"{nbytes / MIB:.1f} MiB ({nbytes} bytes)"


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
        f"loading model '{name}' needs about {_sized(need)}{why}: model_memory_budget_mb "
        f"({limit / MIB:g}) has {_sized(free)} free and no idle lazy model to evict "
        "(pinned models and models with requests in flight stay)"
    )


def steps_outgrow(
    ensembles: list[str], step: str, need: int, basis: str, held: Callable[[str], bool], budget: MemoryBudget
) -> str | None:
    """Why the load of `ensembles` is refused for good when loading their step model `step` (`need`
    bytes, from `basis`) did not fit: with the step models their load holds loaded (`held`), it
    needs more than the whole budget, and no eviction could ever make room for them together.
    None when they would fit (another model is in the way now). It had said "no idle lazy model to
    evict", naming neither the ensemble nor the steps, and was retried."""
    kept = [
        (r.name, r.bytes, LOADED)
        for r in sorted(budget.residents(), key=lambda r: r.name)
        if r.name != step and r.bytes > 0 and held(r.name)
    ]
    if not kept:
        return None
    return steps_together(ensembles, [(step, need, basis), *kept], budget)


LOADED = "loaded"  # the basis of a step's figure that is its footprint now


def steps_together(
    ensembles: list[str], steps: list[tuple[str, int, str]], budget: MemoryBudget
) -> str | None:
    """Why the load of `ensembles` is refused for good: their step models, each `(name, bytes,
    basis)` (basis LOADED: held now), need more than the whole budget together, so no eviction could
    ever make room for them. None when they fit it (or there is no budget)."""
    total, limit = sum(size for _, size, _ in steps), budget.limit_bytes
    if limit <= 0 or total <= limit:
        return None
    return (
        f"{_together(ensembles, steps)}, more than the whole memory budget: model_memory_budget_mb "
        f"is {limit / MIB:g} ({limit} bytes; set by --model-memory-budget-mb or "
        "SLUICEWAY_MODEL_MEMORY_BUDGET_MB)"
    )


def steps_beside_fixed(
    ensembles: list[str], steps: list[tuple[str, int, str]], budget: MemoryBudget
) -> str | None:
    """Why the load of `ensembles` is refused now, retryably: their step models (as in
    `steps_together`) fit the whole budget, but not beside the models never evicted (not lazy, or
    pinned; resident, and not among the steps), so no eviction could make room while those stay
    (an operator may unload one). None when they fit beside them. Models with requests in flight
    are not counted: they may be idle by the time a step needs room."""
    limit, names = budget.limit_bytes, {step for step, _, _ in steps}
    fixed = sorted(
        (r for r in budget.residents() if r.pinned and r.bytes > 0 and r.name not in names),
        key=lambda r: r.name,
    )
    total, held = sum(size for _, size, _ in steps), sum(r.bytes for r in fixed)
    if limit <= 0 or not fixed or total + held <= limit:
        return None
    listed = ", ".join(f"'{r.name}' {r.bytes / MIB:.1f} MiB" for r in fixed)
    return (
        f"{_together(ensembles, steps)}: model_memory_budget_mb ({limit / MIB:g}) has "
        f"{max(limit - held, 0) / MIB:.1f} MiB beside the models never evicted ({listed}: not lazy, "
        "or pinned); unload one of them or raise the budget"
    )


def _together(ensembles: list[str], steps: list[tuple[str, int, str]]) -> str:
    total = sum(size for _, size, _ in steps)
    figures = [_step_figure(step, size, basis) for step, size, basis in steps]
    listed = figures[0] if len(figures) == 1 else f"{', '.join(figures[:-1])} and {figures[-1]}"
    names = ", ".join(f"'{e}'" for e in ensembles)
    return (
        f"loading ensemble{'s' if len(ensembles) > 1 else ''} {names} needs its step models loaded "
        f"together: {listed}, {total} bytes (about {total / MIB:.1f} MiB) in all"
    )


def _step_figure(step: str, size: int, basis: str) -> str:
    if basis == LOADED:
        return f"'{step}' {size / MIB:.1f} MiB (loaded)"
    return f"'{step}' about {size / MIB:.1f} MiB ({basis})"


def for_ensembles(
    exc: MemoryBudgetExceeded,
    ensembles: list[str],
    step: str,
    need: int,
    basis: str,
    held: Callable[[str], bool],
    budget: MemoryBudget,
) -> MemoryBudgetExceeded:
    """`exc`, a refusal of `step`'s load, as the load of `ensembles` (empty: not one) answers it:
    naming them, and not to be retried when their steps need more than the whole budget together."""
    if not ensembles or isinstance(exc, OutgrowsMemoryBudget):
        return exc
    why = steps_outgrow(ensembles, step, need, basis, held, budget)
    if why is not None:
        return OutgrowsMemoryBudget(why)
    return MemoryBudgetExceeded(f"loading ensemble {', '.join(ensembles)}: {exc}")
