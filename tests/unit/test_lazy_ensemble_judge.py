"""A lazy ensemble not loaded is judged by its own config's signature (server/models/lazy_signatures.py),
its requests refused early count on in the version its step's load brings up; a sequence ended by
a budget eviction says so (server/models/manager.py, sequence_routing.py); and the budget never
evicts a model that frees nothing: an ensemble (counted at 0 bytes) or one not loaded
(server/models/lazy.py, memory_budget.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from batcher.sequence_types import UnknownSequence
from batcher.stats import ModelStats
from server.models.lazy_signatures import predicted_signatures
from server.models.manager import ModelManager
from server.models.repository import ModelSource, load_model_source
from server.models.versions import READY, UNAVAILABLE, ModelEntry
from server.protocol.sequence_params import SequenceParams
from server.protocol.validate import Signature
from server.settings import ServerSettings
from tests.support import sequence_models as sm
from tests.support.repositories import write_model
from tests.unit.test_lazy_loads import FakeManager, loads_for, model

EVICTED = "the model version serving it was evicted to fit the memory budget (model_memory_budget_mb)"
RETIRED = "the model version serving it was unloaded or replaced"  # an operator's unload, a reload
ENS = """platform: "ensemble"
max_batch_size: 8
input { name: "IN" data_type: TYPE_FP32 dims: [ 4 ] }
output { name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] }
ensemble_scheduling {
 step { model_name: "add_one" model_version: -1
        input_map { key: "x" value: "IN" } output_map { key: "y" value: "OUT" } }
}
"""


def write_ensemble(repo: Path, versions: tuple[int, ...] = (1,)) -> None:
    for number in versions:
        (repo / "ens" / str(number)).mkdir(parents=True)
    (repo / "ens" / "config.pbtxt").write_text(ENS)


def test_an_ensembles_signature_before_its_load_is_its_configs(tmp_path: Path) -> None:
    """As its load makes it (version_loader.ensemble_version); it had been None: not judged."""
    write_ensemble(tmp_path, (1, 2))
    source = load_model_source(tmp_path, "ens")
    expected = Signature.from_config(source.config)
    assert predicted_signatures(source, 8) == {2: expected}  # the newest: its version_policy's
    assert expected.model == "ens" and expected.sequences is None  # its steps judge sequences


class StepBringsUpEnsemble(FakeManager):
    """A step model's load brings up the ensemble using it (EnsembleDependents.load_waiting)."""

    async def load(self, name: str, source: ModelSource | None = None, keep_unchanged: bool = False) -> None:
        await super().load(name, source, keep_unchanged)
        if name == "add_one":
            version = SimpleNamespace(stats=ModelStats())
            self.entries["ens"] = ModelEntry("ens", versions={1: version}, state=READY)  # type: ignore[dict-item]


async def test_an_ensembles_early_refusals_go_to_the_version_its_steps_load_brings_up(tmp_path: Path) -> None:
    """They had stayed apart, and ModelStatistics listed the ensemble's version twice."""
    model(tmp_path, "add_one", 1000)
    write_ensemble(tmp_path)
    fake = StepBringsUpEnsemble()
    fake.gate.set()
    fake.ensembles["ens"] = {"add_one"}
    loads = loads_for(tmp_path, fake, 0)
    for name in ("add_one", "ens"):
        loads.register_lazy(name)
    early = loads.refused_early.stats_for("ens", 1)
    early.record_failure(1000, "REJECTED")
    await loads.ready("add_one", 30.0)
    assert loads.refused_early.of("ens") == {}
    assert fake.entries["ens"].versions[1].stats.fail.count == 1


def ready_entry(fake: FakeManager, name: str) -> None:
    fake.entries[name] = ModelEntry(name, versions={1: SimpleNamespace()}, state=READY)  # type: ignore[dict-item]


async def test_the_budget_never_evicts_an_ensemble_or_a_model_not_loaded(tmp_path: Path) -> None:
    """An ensemble was counted at its load's measure (0 bytes), and stayed counted once its step's
    eviction took it down: chosen as a victim, it freed nothing ("model ens evicted: 0.0 MiB
    freed")."""
    model(tmp_path, "add_one", 40_000)
    model(tmp_path, "big", 70_000)
    write_ensemble(tmp_path)
    fake = FakeManager()
    fake.gate.set()
    loads = loads_for(tmp_path, fake, 100_000)
    for name in ("add_one", "big", "ens"):
        loads.register_lazy(name)
    await loads.ready("ens", 30.0)  # its step first, then it
    assert fake.loaded == ["add_one", "ens"] and loads.budget.size_of("ens") == 0
    fake.ensembles["ens"] = {"add_one"}
    assert not loads.needs_load("add_one")  # the ensemble is now the least recently used
    loads.budget.record("ghost", 10_000, pinned=False, now=0.0)  # counted, yet not loaded
    fake.entries["ghost"] = ModelEntry("ghost", state=UNAVAILABLE, reason="unloaded")
    await loads.ready("big", 30.0)
    assert fake.evicted == ["add_one"]  # was ["ghost", "ens", "add_one"]
    assert loads.budget.size_of("ens") is None  # down with its step: not counted


async def test_a_sequence_ended_by_an_eviction_says_so_before_and_after_the_next_load(tmp_path: Path) -> None:
    """It had said "the model version serving it was unloaded or replaced", naming no budget."""
    repo = tmp_path / "repo"
    write_model(repo, "acc", sm.accumulator_model(tmp_path / "acc.onnx"), sm.accumulator_config())
    manager = ModelManager(repo, ServerSettings(cache_dir=tmp_path / "cache"), lambda name, ready: None)
    ones = {"x": np.ones((1, 4), np.float32)}
    try:
        await manager.load_all()
        for sid, evicted, why in ((7, True, EVICTED), (8, False, RETIRED)):
            served = manager.resolve("acc")
            assert served.sequences is not None
            await served.sequences.infer(sid, ones, served.batcher.admission(1), start=True)
            await manager.unload("acc", evicted=evicted)
            with pytest.raises(UnknownSequence) as before:  # not loaded: judged without a load
                manager.sequences_before_load.check("acc", SequenceParams(sid, start=False, end=False))
            assert str(before.value).endswith(f"it is not live: {why}")
            await manager.load("acc")
            served = manager.resolve("acc")
            assert served.sequences is not None
            with pytest.raises(UnknownSequence) as after:
                await served.sequences.infer(sid, ones, served.batcher.admission(1))
            assert str(after.value) == str(before.value)
    finally:
        await manager.stop(1.0)
