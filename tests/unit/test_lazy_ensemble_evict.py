"""Ensembles over lazy steps under the memory budget (server/models/lazy.py, eviction_guard.py,
ensemble_dependents.py), over the fake manager of test_lazy_loads: an ensemble's load keeps its
steps, a request in flight keeps them, an evicted step takes its ensembles to "being loaded again"
at once, and a step's load never loads an ensemble whose other step is not loaded."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from server.errors import MemoryBudgetExceeded
from server.models.ensemble_dependents import EnsembleDependents
from server.models.lazy import ModelLoads
from server.models.repository import ModelSource
from server.models.versions import READY, UNAVAILABLE, ModelEntry
from tests.unit.test_lazy_loads import FakeManager, loads_for, model

ENS = """platform: "ensemble"
max_batch_size: 8
input { name: "IN" data_type: TYPE_FP32 dims: [ 4 ] }
output { name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] }
ensemble_scheduling {
 step { model_name: "add_one" model_version: -1
        input_map { key: "x" value: "IN" } output_map { key: "y" value: "PLUS" } }
 step { model_name: "double" model_version: -1
        input_map { key: "x" value: "PLUS" } output_map { key: "y" value: "OUT" } }
}
"""


def serving(in_flight: int = 0, ensemble: bool = False) -> Any:
    """A version as the guard reads it: its batcher's counts, its ensemble's requests in flight."""
    return SimpleNamespace(
        batcher=SimpleNamespace(queued_requests=0, in_flight_batches=0),
        ensemble=SimpleNamespace(in_flight=in_flight) if ensemble else None,
    )


def steps_and_ensemble(repo: Path, fake: FakeManager, budget: int) -> ModelLoads:
    """add_one and double (lazy, 40,000 bytes each), `pinned` (30,000, not lazy), ens over both."""
    model(repo, "add_one", 40_000)
    model(repo, "double", 40_000)
    model(repo, "pinned", 30_000, config="")
    (repo / "ens" / "1").mkdir(parents=True)
    (repo / "ens" / "config.pbtxt").write_text(ENS)
    fake.gate.set()
    loads = loads_for(repo, fake, budget)
    for name in ("add_one", "double", "ens"):
        loads.register_lazy(name)
    return loads


async def test_an_ensembles_load_never_evicts_its_own_steps(tmp_path: Path) -> None:
    """Its second step's load evicted its first (the least recently used), and the ensemble's load
    then failed for want of it, for good. Now the load is refused: the steps do not fit together."""
    fake = FakeManager()
    loads = steps_and_ensemble(tmp_path, fake, 100_000)  # pinned + one step, not both
    await loads.load("pinned")
    with pytest.raises(MemoryBudgetExceeded, match="model_memory_budget_mb"):
        await loads.ready("ens", 30.0)
    assert fake.evicted == []  # was ["add_one"], evicted by double's load
    # Refused before any step loads: they do not fit beside pinned (test_budget_h19b_ensemble_fixed.py);
    # add_one had loaded first.
    assert fake.loaded == ["pinned"]


async def test_an_ensemble_request_in_flight_keeps_its_step_models(tmp_path: Path) -> None:
    """Between two steps no step model holds the request in a queue: it had been evicted, and the
    request failed UNAVAILABLE at its next step."""
    fake = FakeManager()
    loads = steps_and_ensemble(tmp_path, fake, 100_000)
    await loads.ready("add_one", 30.0)
    await loads.ready("double", 30.0)
    fake.ensembles["ens"] = {"add_one", "double"}
    fake.entries["ens"] = ModelEntry("ens", versions={1: serving(1, ensemble=True)}, state=READY)
    for name in ("add_one", "double"):
        fake.entries[name].versions = {1: serving()}
    with pytest.raises(MemoryBudgetExceeded):  # pinned (30,000) fits only by evicting a step
        await loads.load("pinned")
    assert fake.evicted == []
    fake.entries["ens"].versions = {1: serving(0, ensemble=True)}  # the request ended
    await loads.load("pinned")
    assert fake.evicted == ["add_one"]


async def test_an_evicted_steps_ensembles_wait_for_the_next_load_from_the_start(tmp_path: Path) -> None:
    """While the step drains, its ensemble is still READY: a request for it began its steps and
    failed at the evicted one ("not ready (unloaded)"). From the eviction's start it is dormant:
    its requests wait for the next load."""
    fake = FakeManager()
    loads = steps_and_ensemble(tmp_path, fake, 100_000)
    await loads.ready("add_one", 30.0)
    await loads.ready("double", 30.0)
    fake.ensembles["ens"] = {"add_one", "double"}
    fake.entries["ens"] = ModelEntry("ens", versions={1: serving(0, ensemble=True)}, state=READY)
    fake.unload_gate.clear()  # the eviction's drain takes a while
    load = asyncio.create_task(loads.load("pinned"))
    await fake.unloading.wait()
    assert fake.unloaded == ["add_one"]
    assert fake.entries["ens"].dormant and loads.needs_load("ens")  # was False: it ran its steps
    fake.unload_gate.set()
    await load


async def test_a_step_loaded_does_not_load_an_ensemble_whose_other_step_is_not_loaded() -> None:
    """A direct request loading add_one tried the ensemble, which failed for want of double (evicted)
    and stayed failed for good (no longer lazy); it stays lazy, and its own next request loads it."""
    models = {
        "add_one": ModelEntry("add_one", state=READY),
        "double": ModelEntry("double", state=UNAVAILABLE, reason="evicted", dormant=True),
        "ens": ModelEntry("ens", state=UNAVAILABLE, reason="its step 'double' is not loaded", dormant=True),
    }
    dependents = EnsembleDependents(models, lambda name, ready: None)
    steps = [SimpleNamespace(model_name=m) for m in ("add_one", "double")]
    config = SimpleNamespace(platform="ensemble", ensemble_scheduling=SimpleNamespace(step=steps))
    dependents.note(cast(ModelSource, SimpleNamespace(name="ens", config=config, where="config.pbtxt")))
    tried: list[str] = []

    async def load_again(name: str) -> bool:
        tried.append(name)
        return False

    await dependents.load_waiting("add_one", load_again)
    assert tried == []  # was ["ens"]
    models["double"] = ModelEntry("double", state=READY)
    await dependents.load_waiting("double", load_again)
    assert tried == ["ens"]
