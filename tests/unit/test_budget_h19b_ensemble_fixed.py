"""An ensemble whose step models fit the memory budget but not beside the models never evicted (not
lazy, or pinned) is refused, retryably, before any step loads (server/models/ensemble_budget.py,
memory_budget.steps_beside_fixed), over the fake manager of test_lazy_loads (sizes are the files').

Found by an edge operator's tester: budget 5 MiB, an eager 1.5 MiB model, `ens_abc` over three
1.5 MiB lazy models: each request evicted an idle model and loaded `a` before `b` was refused.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from server.errors import MemoryBudgetExceeded, OutgrowsMemoryBudget
from server.models.memory_budget import LOADED, MemoryBudget, steps_beside_fixed
from tests.unit.test_budget_ensemble_refusal import ensemble_over
from tests.unit.test_lazy_loads import FakeManager, model

MB = 1_000_000
MIB = 1 << 20


async def test_steps_that_fit_only_without_the_eager_models_are_refused_before_any_loads(
    tmp_path: Path,
) -> None:
    """add_one and double (1.5 MiB each, 3 MiB together) under 4 MiB, eager e (1.5 MiB) and idle
    lazy c (0.5 MiB) resident. Before: add_one loaded, double's load evicted c and was refused anyway
    (loaded [e, c, add_one], evicted [c]), and so on at every retry."""
    fake = FakeManager()
    loads = ensemble_over(tmp_path, fake, 3 * MIB // 2, 4 * MIB)
    model(tmp_path, "e", 3 * MIB // 2, config="")  # not lazy: never evicted
    model(tmp_path, "c", MIB // 2)
    await loads.load("e")
    loads.register_lazy("c")
    await loads.ready("c", 30.0)
    for _ in range(2):  # a retry is refused the same way, still loading and evicting nothing
        with pytest.raises(MemoryBudgetExceeded) as refused:
            await loads.ready("ens", 30.0)
        assert not isinstance(refused.value, OutgrowsMemoryBudget)  # an operator may unload e
        assert fake.loaded == ["e", "c"] and fake.evicted == [], (fake.loaded, fake.evicted)
    message = str(refused.value)
    assert message.startswith(
        "loading ensemble 'ens' needs its step models loaded together: 'add_one' about 1.5 MiB "
        "(its files' size) and 'double' about 1.5 MiB (its files' size), 3145728 bytes"
    ), message
    assert message.endswith(
        "model_memory_budget_mb (4) has 2.5 MiB beside the models never evicted ('e' 1.5 MiB: "
        "not lazy, or pinned); unload one of them or raise the budget"
    ), message
    assert loads.stats.refused == 2 and loads.stats.evictions == 0
    await loads.unload("e")  # the operator makes room: the ensemble loads
    await loads.ready("ens", 30.0)
    assert fake.loaded[2:] == ["add_one", "double", "ens"] and fake.evicted == []


def test_only_models_never_evicted_and_not_steps_count_beside_the_steps() -> None:
    budget = MemoryBudget(10 * MB)
    budget.record("eager", 3 * MB, pinned=True, now=1.0)
    budget.record("pinned_step", 2 * MB, pinned=True, now=1.0)  # a step: in the steps' own sum
    budget.record("idle", 4 * MB, pinned=False, now=1.0)  # evictable (or in flight: only for now)
    steps = [("pinned_step", 2 * MB, LOADED), ("b", 4 * MB, "its files' size")]
    assert steps_beside_fixed(["ens"], steps, budget) is None  # 6 + 3 <= 10
    steps.append(("c", 2 * MB, "its files' size"))
    why = steps_beside_fixed(["ens"], steps, budget)  # 8 + 3 > 10
    assert why is not None and "('eager' 2.9 MiB: not lazy, or pinned)" in why, why
    assert steps_beside_fixed(["ens"], steps, MemoryBudget(0)) is None
