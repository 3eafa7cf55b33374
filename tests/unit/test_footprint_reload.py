"""A load's footprint is what its versions took (server/models/footprint.py LoadMeasure, the
manager's `on_loaded`): the fresh ones measured while the replaced were still loaded, a kept one at
what it took at its own load. Measured after the retirement against the bytes the model was counted
for, each reload carried that count's error into the next: 600 reloads that changed a model's
config took its 2.3 MiB to 4.5 MiB (a tester, session 55), and versions added and removed in poll
mode, or one swapped beside another, grew it 15-20 KB each (another). Over the fake manager of
test_lazy_loads, with a scripted memory meter; version 1's files are half version 2's."""

from __future__ import annotations

from pathlib import Path
from typing import cast

from server.models.lazy import ModelLoads
from server.models.manager import ModelManager
from server.models.repository import ModelSource
from server.models.versions import READY, ModelEntry
from tests.unit.test_lazy_loads import Clock, FakeManager

MIB = 1 << 20
TAKES = {1: 2 * MIB, 2: 4 * MIB}  # what loading each version takes
KEPT_BY_PROCESS = 4096  # what the process keeps of each reload (logs, stats, interned names)


class Meter:
    def __init__(self) -> None:
        self.bytes = 100 * MIB

    def __call__(self) -> int:
        return self.bytes


class VersionsManager(FakeManager):
    """A load takes TAKES[v] for each version not kept, calls on_loaded while the replaced are
    still up, then frees them (but KEPT_BY_PROCESS); `keep`: the versions a reload keeps serving."""

    def __init__(self, meter: Meter) -> None:
        super().__init__()
        self.gate.set()
        self.meter = meter
        self.versions: list[int] = [1]
        self.keep: list[int] = []
        self.serving: list[int] = []
        self.on_loaded = lambda kept, versions: None  # ModelLoads sets its own

    async def load(self, name: str, source: ModelSource | None = None, keep_unchanged: bool = False) -> None:
        kept = [v for v in self.keep if v in self.serving and v in self.versions]
        fresh = [v for v in self.versions if v not in kept]
        self.meter.bytes += sum(TAKES[v] for v in fresh)
        self.on_loaded(kept, sorted(self.versions, reverse=True))
        replaced = [v for v in self.serving if v not in kept]
        self.meter.bytes -= sum(TAKES[v] for v in replaced) - (KEPT_BY_PROCESS if replaced else 0)
        self.serving = list(self.versions)
        self.entries[name] = ModelEntry(name=name, state=READY)


def _repo(tmp_path: Path, versions: list[int], batch: int = 8) -> None:
    (tmp_path / "a").mkdir(exist_ok=True)
    (tmp_path / "a" / "config.pbtxt").write_text(f"max_batch_size: {batch}\nversion_policy {{ all {{ }} }}\n")
    for v in (1, 2):
        folder = tmp_path / "a" / str(v)
        if v in versions:
            folder.mkdir(exist_ok=True)
            (folder / "model.onnx").write_bytes(b"\0" * (1000 * v))  # files in proportion to TAKES
        elif folder.exists():
            (folder / "model.onnx").unlink()
            folder.rmdir()


def _loads(tmp_path: Path, fake: VersionsManager) -> ModelLoads:
    _repo(tmp_path, fake.versions)
    return ModelLoads(cast(ModelManager, fake), tmp_path, 0, in_use=fake.meter, clock=Clock())


async def test_reloads_that_change_the_config_measure_the_same(tmp_path: Path) -> None:
    fake = VersionsManager(Meter())
    loads = _loads(tmp_path, fake)
    sizes = []
    for turn in range(50):
        _repo(tmp_path, [1], batch=4 if turn % 2 else 8)  # a new config: a new key, no smallest of several
        await loads.load("a")
        sizes.append(loads.budget.size_of("a"))
    # Was TAKES[1] + k * KEPT_BY_PROCESS at the k-th reload: 2.19 MiB after 50.
    assert sizes == [TAKES[1]] * 50


async def test_versions_added_and_removed_keep_their_own_shares(tmp_path: Path) -> None:
    """Poll mode rolling versions: v2 added beside v1, then removed, 20 times."""
    fake = VersionsManager(Meter())
    fake.keep = [1, 2]
    loads = _loads(tmp_path, fake)
    await loads.load("a")
    sizes = set()
    for _ in range(20):
        for versions in ([1, 2], [1]):
            fake.versions = versions
            _repo(tmp_path, versions)
            await loads.load("a")
            sizes.add((tuple(versions), loads.budget.size_of("a")))
    # Had grown KEPT_BY_PROCESS with every change: 40 of them.
    assert sizes == {((1, 2), TAKES[1] + TAKES[2]), ((1,), TAKES[1])}


async def test_a_version_swapped_beside_a_kept_one(tmp_path: Path) -> None:
    fake = VersionsManager(Meter())
    fake.versions, fake.keep = [1, 2], [1]
    loads = _loads(tmp_path, fake)
    sizes = []
    for batch in (8, 4, 8, 4, 8):  # a reload that replaces version 2 and keeps version 1
        _repo(tmp_path, [1, 2], batch)
        await loads.load("a")
        sizes.append(loads.budget.size_of("a"))
    assert sizes == [TAKES[1] + TAKES[2]] * 5


async def test_an_unloaded_model_is_measured_afresh_and_forgotten(tmp_path: Path) -> None:
    fake = VersionsManager(Meter())
    loads = _loads(tmp_path, fake)
    await loads.load("a")
    await loads.unload("a")
    fake.meter.bytes -= TAKES[1]
    fake.serving = []
    await loads.load("a")
    assert loads.budget.size_of("a") == TAKES[1]
    await loads.unload("a", forget=True)
    assert "a" not in vars(loads._measure)["_shares"]  # no entry a name once loaded keeps
