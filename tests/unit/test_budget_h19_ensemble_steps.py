"""An ensemble whose step models can never fit the memory budget together is refused before any of
them loads (server/models/ensemble_budget.py), over the fake manager of test_lazy_loads (sizes are
the files': the meter reads 0).

It had been refused OUTGROWS_MEMORY_BUDGET only when its second step's load did not fit, after its
first step had loaded, evicting an idle lazy model for it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from server.errors import OutgrowsMemoryBudget
from server.models.ensemble_budget import judge_steps
from server.models.memory_budget import MemoryBudget
from tests.unit.test_budget_ensemble_refusal import ensemble_over
from tests.unit.test_lazy_loads import FakeManager, model


async def test_steps_that_never_fit_together_are_refused_before_any_loads_or_evicts(tmp_path: Path) -> None:
    """add_one and double (60,000 bytes each) under 100,000, with idle lazy c (50,000) resident:
    before, add_one loaded, evicting c, then double's load showed the two never fit."""
    fake = FakeManager()
    loads = ensemble_over(tmp_path, fake, 60_000, 100_000)
    model(tmp_path, "c", 50_000)
    loads.register_lazy("c")
    await loads.ready("c", 30.0)
    with pytest.raises(OutgrowsMemoryBudget) as refused:
        await loads.ready("ens", 30.0)
    assert fake.loaded == ["c"] and fake.evicted == [], (fake.loaded, fake.evicted)
    assert str(refused.value).startswith(
        "loading ensemble 'ens' needs its step models loaded together: 'add_one' about 0.1 MiB "
        "(its files' size) and 'double' about 0.1 MiB (its files' size), 120000 bytes (about 0.1 MiB) "
        "in all, more than the whole memory budget: model_memory_budget_mb is"
    ), str(refused.value)
    assert loads.stats.refused == 1 and loads.stats.evictions == 0
    assert not loads.needs_load("c") and loads.needs_load("add_one")


async def test_a_loaded_step_counts_its_footprint_now_and_a_measured_one_its_measure(tmp_path: Path) -> None:
    """double loaded (its footprint now), add_one evicted (what its last load measured): judged
    together before add_one loads again, so double is not evicted by add_one's load."""
    fake = FakeManager()
    loads = ensemble_over(tmp_path, fake, 60_000, 100_000)
    await loads.ready("add_one", 30.0)
    await loads.ready("double", 30.0)  # evicts add_one
    with pytest.raises(OutgrowsMemoryBudget) as refused:
        await loads.ready("ens", 30.0)
    message = str(refused.value)
    assert "'add_one' about 0.1 MiB (as measured at its last load) and 'double' 0.1 MiB (loaded)" in message
    assert fake.loaded == ["add_one", "double"] and fake.evicted == ["add_one"]


async def test_steps_that_fit_together_pass_the_judgement(tmp_path: Path) -> None:
    fake = FakeManager()
    loads = ensemble_over(tmp_path, fake, 40_000, 100_000)
    await loads.ready("ens", 30.0)
    assert fake.loaded == ["add_one", "double", "ens"] and loads.stats.refused == 0


async def test_a_step_not_readable_or_not_dormant_is_left_to_its_own_load(tmp_path: Path) -> None:
    """No verdict from what cannot be read now (its load says what is wrong), nor without a budget."""
    model(tmp_path, "big", 80_000)
    budget = MemoryBudget(100_000)

    def dormant(name: str) -> bool:
        return True

    await judge_steps(["ens"], ["big", "missing"], budget, tmp_path, dormant)  # 'missing' has no files
    await judge_steps(["ens"], ["big", "big2"], MemoryBudget(0), tmp_path, dormant)
    model(tmp_path, "big2", 80_000)
    with pytest.raises(OutgrowsMemoryBudget):
        await judge_steps(["ens"], ["big", "big2"], budget, tmp_path, dormant)
    await judge_steps(["ens"], ["big", "big2"], budget, tmp_path, lambda name: name == "big")
