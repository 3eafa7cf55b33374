"""A model's measured footprint: the same on every load of the same files, kept through an
eviction so that its reload is judged by it, and a reload of a loaded model never refused."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import cast

import onnxruntime as ort
import pytest

from server.errors import MemoryBudgetExceeded
from server.models.lazy import ModelLoads
from server.models.manager import ModelManager
from server.models.repository import ModelSource
from server.models.versions import READY, ModelEntry
from tests.support.repositories import demo_repository
from tests.support.server_process import REPO_ROOT
from tests.unit.test_lazy_loads import LAZY, Clock, FakeManager, model


class SessionManager(FakeManager):
    """A fake manager whose loads open a real onnxruntime session of the model's file."""

    def __init__(self) -> None:
        super().__init__()
        self.gate.set()
        self.sessions: dict[str, ort.InferenceSession] = {}

    async def load(self, name: str, source: ModelSource | None = None, keep_unchanged: bool = False) -> None:
        assert source is not None
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        path = str(source.versions[1])
        self.sessions[name] = await asyncio.to_thread(ort.InferenceSession, path, options)
        self.entries[name] = ModelEntry(name=name, state=READY)

    async def unload(self, name: str, *, evicted: bool = False) -> None:
        await super().unload(name, evicted=evicted)
        del self.sessions[name]
        gc.collect()


async def three_loads(root: Path, resnet: Path) -> dict[str, list[object]]:
    """Load lazy copies `a`, `b`, then `a` again of `resnet` under a budget with room for one
    (each load evicts the other): every load's measured footprint, and what was evicted."""
    for name in ("a", "b"):
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(LAZY)
        (root / name / "1" / "model.onnx").symlink_to(resnet)
    fake = SessionManager()
    files = resnet.stat().st_size
    loads = ModelLoads(cast(ModelManager, fake), root, 2 * files, clock=Clock())  # room for one
    for name in ("a", "b"):
        loads.register_lazy(name)
    measured: list[object] = []
    for name in ("a", "b", "a"):
        await loads.ready(name, 60.0)
        measured.append(loads.budget.size_of(name) or 0)
    return {"measured": measured, "evicted": list(fake.evicted)}


# Runs `three_loads` in a fresh interpreter; prints its result as JSON.
# With onnxruntime before 1.24 (the only one on Python 3.10) a load now and then measures ~65 MiB
# more than the others, most often a process's first (below).
_OLD_ORT = tuple(int(part) for part in ort.__version__.split(".")[:2]) < (1, 24)
THREE_LOADS = """
import asyncio, json, sys
from pathlib import Path
from tests.unit.test_memory_budget_footprint import three_loads

print(json.dumps(asyncio.run(three_loads(Path(sys.argv[1]), Path(sys.argv[2])))))
"""


def test_a_models_footprint_measures_the_same_on_its_reload(tmp_path: Path) -> None:
    """The resident set's growth had been the measure: resnet's first load in a process measured
    156 MiB (the process's one-time costs), and its reload after an eviction reused the heap that
    load freed (9-67 MiB): so a measured footprint could not be kept for the next load.

    Measured in a fresh child interpreter. The measure is the process's heap growth over the load
    (server/models/footprint.py), so whatever else allocates meanwhile counts too; in a pytest worker
    that is every thread earlier tests left running there (a CI run on 3.10 read resnet's first
    load at 134.4 MiB against 68.3 and 76.6 for the next two). The server's own loads share that
    limit (RELIABILITY.md: a noisy measure is no verdict); this test pins the measure itself."""
    resnet = demo_repository() / "resnet" / "1" / "model.onnx"
    # With onnxruntime 1.23 a session's creation now and then holds ~65 MiB more (134.4 MiB for the
    # first load in 1 child of 8 here, twice in CI runs; 1.31 measured 45.0 MiB for all three loads in
    # 8 of 8): not resolved (RELIABILITY.md, twenty-third session). Seen most on a process's first load,
    # so there the reload is held to the second load, and a second child runs when the first's loads
    # disagree: the fault this test is for (a reload that reuses the heap its eviction freed: the
    # resident set's 9-67 MiB against 156) shows in every child, an outlier creation in few.
    attempts = []
    for attempt in range(2 if _OLD_ORT else 1):
        measured = _three_loads_in_a_child(tmp_path / str(attempt), resnet)
        first, second, reload = measured
        against = second if _OLD_ORT else first
        # Within a quarter: onnxruntime 1.23 (the 3.10 venv) allocates 67-78 MiB for the same session
        # from load to load (10% failed about 1 run in 4); the resident set's measure was 2-3x apart.
        attempts.append([m / 2**20 for m in measured])
        if abs(reload - against) <= against // 4:
            return
    raise AssertionError(f"a reload's footprint differs (MiB, per child): {attempts}")


def _three_loads_in_a_child(root: Path, resnet: Path) -> list[int]:
    root.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", THREE_LOADS, str(root), str(resnet)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    measured = [int(size) for size in result["measured"]]
    assert result["evicted"] == ["a", "b"], ([m / 2**20 for m in measured], result["evicted"])
    return measured


def growth(sizes: dict[str, int], fake: FakeManager) -> list[int]:
    """A memory meter over `fake`: each load adds `sizes[name]`, each unload frees it."""
    in_use = [0]
    load, unload = fake.load, fake.unload

    async def loading(name: str, source: object = None, keep_unchanged: bool = False) -> None:
        await load(name, source)  # type: ignore[arg-type]
        fake.events.append(f"load {name}")
        in_use[0] += sizes[name]

    async def unloading(name: str, *, evicted: bool = False) -> None:
        await unload(name, evicted=evicted)
        fake.events.append(f"evict {name}" if evicted else f"unload {name}")

    fake.load = loading  # type: ignore[method-assign]
    fake.unload = unloading  # type: ignore[method-assign]
    return in_use


class EventManager(FakeManager):
    def __init__(self) -> None:
        super().__init__()
        self.gate.set()
        self.events: list[str] = []


async def test_an_evicted_models_reload_is_judged_by_its_measured_footprint(tmp_path: Path) -> None:
    """Its estimate had been its files' size again: a's reload (files 20,000, measured 60,000)
    loaded beside b, passing the budget, and evicted b only after."""
    model(tmp_path, "pinned", 30_000, config="")
    model(tmp_path, "a", 20_000)
    model(tmp_path, "b", 20_000)
    fake = EventManager()
    in_use = growth({"pinned": 30_000, "a": 60_000, "b": 20_000}, fake)
    loads = ModelLoads(cast(ModelManager, fake), tmp_path, 100_000, in_use=lambda: in_use[0], clock=Clock())
    await loads.load("pinned")
    for name in "ab":
        loads.register_lazy(name)
    await loads.ready("a", 30.0)  # 90,000 used
    await loads.ready("b", 30.0)  # evicts a: 50,000 used
    fake.events.clear()
    await loads.ready("a", 30.0)
    assert fake.events == ["evict b", "load a"]  # room made before the load, not after it
    assert loads.budget.used_bytes == 90_000


async def test_a_model_measured_bigger_than_the_budget_is_refused_naming_its_measure(tmp_path: Path) -> None:
    model(tmp_path, "a", 20_000)
    model(tmp_path, "b", 20_000)
    fake = EventManager()
    in_use = growth({"a": 150_000, "b": 20_000}, fake)
    loads = ModelLoads(cast(ModelManager, fake), tmp_path, 100_000, in_use=lambda: in_use[0], clock=Clock())
    for name in "ab":
        loads.register_lazy(name)
    await loads.ready("a", 30.0)  # its files said 20,000: loaded, then over the budget alone
    await loads.ready("b", 30.0)  # evicts a
    await loads.ready("a", 30.0)  # measured over the whole budget once: loaded to measure again
    await loads.ready("b", 30.0)
    with pytest.raises(MemoryBudgetExceeded, match=r"the smallest of its last 2 loads' measurements"):
        await loads.ready("a", 30.0)


async def test_a_loaded_models_reload_is_not_refused_for_its_own_bytes(tmp_path: Path) -> None:
    """A poll-mode change to a loaded lazy model over the budget alone was refused ("needs about
    11.8 MiB ... has 0.0 MiB free"), and its old files served until something evicted it."""
    model(tmp_path, "a", 20_000)
    model(tmp_path, "b", 20_000)
    fake = EventManager()
    sizes = {"a": 150_000, "b": 20_000}
    in_use = growth(sizes, fake)
    loads = ModelLoads(cast(ModelManager, fake), tmp_path, 100_000, in_use=lambda: in_use[0], clock=Clock())
    for name in "ba":
        loads.register_lazy(name)
    await loads.ready("b", 30.0)
    await loads.ready("a", 30.0)  # b evicted after the load, and a alone is over the budget
    (tmp_path / "a" / "config.pbtxt").write_text(LAZY + "# edited\n")  # what the poller reloads
    fake.events.clear()
    sizes["a"] = 0  # the reload's 150,000, less what a held, freed as it retired the old version
    await loads.load("a", keep_unchanged=True)
    assert fake.events == ["load a"] and loads.stats.refused == 0
    assert loads.budget.used_bytes == 150_000


async def test_a_refusal_says_whether_the_model_outgrows_the_whole_budget_or_only_what_is_free(
    tmp_path: Path,
) -> None:
    """A need over the whole budget had been refused "no idle lazy model to evict" as if an
    eviction could help; a need that only the pinned models leave no room for keeps that message."""
    model(tmp_path, "pinned", 90_000, config="")
    model(tmp_path, "a", 40_000)
    model(tmp_path, "big", 150_000)
    loads = ModelLoads(cast(ModelManager, EventManager()), tmp_path, 100_000, in_use=lambda: 0, clock=Clock())
    await loads.load("pinned")
    for name in ("a", "big"):
        loads.register_lazy(name)
    with pytest.raises(MemoryBudgetExceeded) as full:
        await loads.ready("a", 30.0)
    said = "(its files' size): model_memory_budget_mb (0.0953674) has 0.0 MiB (10000 bytes) free and no"
    assert said in str(full.value)
    with pytest.raises(MemoryBudgetExceeded) as too_big:
        await loads.ready("big", 30.0)
    assert str(too_big.value) == (
        "loading model 'big' needs 150000 bytes (about 0.1 MiB, its files' size), more than the whole "
        "memory budget: model_memory_budget_mb is 0.0953674 (100000 bytes; set by --model-memory-budget-mb "
        "or SLUICEWAY_MODEL_MEMORY_BUDGET_MB)"
    )
    assert loads.stats.refused == 2


async def test_a_reload_is_measured_as_what_it_holds_though_the_old_versions_went_during_it(
    tmp_path: Path,
) -> None:
    """A reload retires the versions it replaced before its measure is read: a reload of the same
    files read about 0, and the model was counted at its files' size from then on (a tester's
    20 MiB budget let in 17, 35, 52, then 71 tiny models, one round of reloads after another)."""
    model(tmp_path, "a", 1_000, config="")
    fake = EventManager()
    in_use = [0]
    load = fake.load

    async def loading(name: str, source: object = None, keep_unchanged: bool = False) -> None:
        await load(name, source)  # type: ignore[arg-type]
        in_use[0] = 60_000  # the new versions hold 60,000; those they replaced are gone by now

    fake.load = loading  # type: ignore[method-assign]
    loads = ModelLoads(cast(ModelManager, fake), tmp_path, 100_000, in_use=lambda: in_use[0], clock=Clock())
    await loads.load("a")
    assert loads.budget.used_bytes == 60_000
    await loads.load("a")  # read 60,000 before and after
    assert loads.budget.used_bytes == 60_000
