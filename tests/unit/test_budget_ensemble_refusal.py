"""An ensemble whose step models can never be loaded together within the memory budget is refused
for good, naming it and its steps' sizes (server/models/lazy.py, memory_budget.steps_outgrow), over
the fake manager of test_lazy_loads (sizes are the files': the meter reads 0).

Two 3.2 MiB steps under a 4 MiB budget: the ensemble's request had been refused "loading model
'big_add' needs about 3.2 MiB ...: 0.8 MiB free and no idle lazy model to evict" (its other step
was idle, held by the ensemble's own load), with no ErrorInfo, so clients retried it 5 times.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from server.errors import MemoryBudgetExceeded, OutgrowsMemoryBudget
from server.models.lazy import ModelLoads
from tests.unit.test_lazy_ensemble_evict import ENS
from tests.unit.test_lazy_loads import FakeManager, loads_for, model


def ensemble_over(repo: Path, fake: FakeManager, step_bytes: int, budget: int) -> ModelLoads:
    """add_one and double (lazy, `step_bytes` each), ens over both."""
    model(repo, "add_one", step_bytes)
    model(repo, "double", step_bytes)
    (repo / "ens" / "1").mkdir(parents=True)
    (repo / "ens" / "config.pbtxt").write_text(ENS)
    fake.gate.set()
    loads = loads_for(repo, fake, budget)
    for name in ("add_one", "double", "ens"):
        loads.register_lazy(name)
    return loads


async def test_an_ensemble_whose_steps_outgrow_the_budget_together_is_refused_for_good(
    tmp_path: Path,
) -> None:
    fake = FakeManager()
    loads = ensemble_over(tmp_path, fake, 60_000, 100_000)  # each step fits alone, not both
    await loads.ready("add_one", 30.0)
    await loads.ready("double", 30.0)  # evicts add_one
    with pytest.raises(OutgrowsMemoryBudget) as refused:
        await loads.ready("ens", 30.0)
    message = str(refused.value)
    assert message.startswith("loading ensemble 'ens' needs its step models loaded together: 'add_one' about")
    assert "'double' 0.1 MiB (loaded), 120000 bytes (about 0.1 MiB) in all, more than the whole" in message
    assert fake.loaded == ["add_one", "double"] and fake.evicted == ["add_one"]  # nothing more
    assert loads.needs_load("ens") and not loads.needs_load("double")


async def test_steps_that_fit_together_but_not_now_are_refused_for_a_while_naming_the_ensemble(
    tmp_path: Path,
) -> None:
    """A pinned model is in the way now (it may be unloaded): retryable, as before, but saying
    which ensemble's load it was."""
    fake = FakeManager()
    loads = ensemble_over(tmp_path, fake, 40_000, 100_000)
    model(tmp_path, "pinned", 30_000, config="")
    await loads.load("pinned")
    await loads.ready("double", 30.0)
    with pytest.raises(MemoryBudgetExceeded) as refused:
        await loads.ready("ens", 30.0)
    assert not isinstance(refused.value, OutgrowsMemoryBudget)
    # Refused before add_one loads (test_budget_h19b_ensemble_fixed.py): it had said "loading
    # ensemble ens: loading model 'add_one' needs about ..." after loading nothing but failing there.
    assert str(refused.value).startswith("loading ensemble 'ens' needs its step models loaded together")
    assert "beside the models never evicted ('pinned'" in str(refused.value)
