"""A reload's footprint is what its new versions took while the old were still loaded
(server/models/footprint.py LoadMeasure, the manager's `on_replacing`), not the heap's growth after
the old were retired plus the bytes the model was counted for: that carried each reload's error
into the next, and a process keeping a few KB a reload grew a 2.3 MiB model to 4.5 MiB over 600
reloads that changed its config, until lazy models were refused for room (a tester, session 55).
Over the fake manager of test_lazy_loads, with a scripted memory meter."""

from __future__ import annotations

from pathlib import Path
from typing import cast

from server.models.lazy import ModelLoads
from server.models.manager import ModelManager
from server.models.repository import ModelSource
from server.models.versions import READY, ModelEntry
from tests.unit.test_lazy_loads import Clock, FakeManager, model

MIB = 1 << 20
NEW = 2 * MIB  # what a load's versions take
KEPT_BY_PROCESS = 4096  # what the process keeps of each reload (logs, stats, interned names)


class Meter:
    def __init__(self) -> None:
        self.bytes = 100 * MIB

    def __call__(self) -> int:
        return self.bytes


class ReloadingManager(FakeManager):
    """Loads take NEW bytes; a reload calls on_replacing while both are up, then frees the old
    versions' bytes but KEPT_BY_PROCESS; `kept`: a version serves on (the poller added one)."""

    def __init__(self, meter: Meter, kept: bool = False) -> None:
        super().__init__()
        self.gate.set()
        self.meter, self.kept = meter, kept
        self.on_replacing = lambda kept: None  # ModelLoads sets its own

    async def load(self, name: str, source: ModelSource | None = None, keep_unchanged: bool = False) -> None:
        reload = name in self.entries and self.entries[name].state == READY
        self.meter.bytes += NEW
        if reload:
            self.on_replacing(self.kept)
            self.meter.bytes -= NEW - KEPT_BY_PROCESS  # the replaced versions retired
        self.entries[name] = ModelEntry(name=name, state=READY)


def _loads(tmp_path: Path, fake: ReloadingManager) -> ModelLoads:
    model(tmp_path, "a", 1000, config="max_batch_size: 8\n")
    return ModelLoads(cast(ModelManager, fake), tmp_path, 0, in_use=fake.meter, clock=Clock())


async def _reload_with_changed_configs(tmp_path: Path, loads: ModelLoads, times: int) -> list[int]:
    sizes = []
    for turn in range(times):
        batch = 4 if turn % 2 else 8  # a new config each time: a new key, no smallest of several
        (tmp_path / "a" / "config.pbtxt").write_text(f"max_batch_size: {batch}\n")
        await loads.load("a")
        sizes.append(loads.budget.size_of("a") or 0)
    return sizes


async def test_reloads_that_change_the_config_measure_the_same(tmp_path: Path) -> None:
    fake = ReloadingManager(Meter())
    loads = _loads(tmp_path, fake)
    sizes = await _reload_with_changed_configs(tmp_path, loads, 50)
    # Was NEW + k * KEPT_BY_PROCESS at the k-th reload: 2.19 MiB after 50.
    assert sizes == [NEW] * 50


async def test_a_reload_that_keeps_a_version_is_measured_against_the_models_count(tmp_path: Path) -> None:
    """Versions kept serving: the new ones' share is the growth less what the replaced freed,
    known only from what the model was counted for."""
    fake = ReloadingManager(Meter(), kept=True)
    loads = _loads(tmp_path, fake)
    sizes = await _reload_with_changed_configs(tmp_path, loads, 3)
    assert sizes == [NEW, NEW + KEPT_BY_PROCESS, NEW + 2 * KEPT_BY_PROCESS]


async def test_a_first_load_and_a_load_after_an_unload_measure_their_growth(tmp_path: Path) -> None:
    fake = ReloadingManager(Meter())
    loads = _loads(tmp_path, fake)
    await loads.load("a")
    await loads.unload("a")
    fake.meter.bytes -= NEW
    await loads.load("a")
    assert loads.budget.size_of("a") == NEW
