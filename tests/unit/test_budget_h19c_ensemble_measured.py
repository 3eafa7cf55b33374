"""An ensemble whose lazy steps, once loaded, measure more than the whole memory budget together is
refused OUTGROWS_MEMORY_BUDGET naming them, from the request whose step loads measured them on
(server/models/lazy.py `_load_held`, `_judge_steps`), and its steps go back within the budget.

Found by a differential tester: `ens` over the lazy Add/Mul models `add1` and `dbl` (files a few
hundred bytes, each measured ~1.1 MiB: onnxruntime's arena chunk), budget 2 MiB. The steps were
judged together at their files' size (0.0 MiB), loaded, and the ensemble's own load (0 bytes) was
refused "needs about 0.0 MiB ... 0.0 MiB free and no idle lazy model to evict", retryably, on every
request, both steps staying loaded, 2.3 of 2 MiB used. The meter here is fake: each load of a model
grows it by the next size listed for it.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from server.errors import MemoryBudgetExceeded, OutgrowsMemoryBudget
from server.models.lazy import ModelLoads
from server.models.manager import ModelManager
from tests.unit.test_footprint_noise import MeteredManager
from tests.unit.test_lazy_ensemble_evict import ENS
from tests.unit.test_lazy_loads import Clock, model

MIB = 1 << 20
BUDGET = 2 * MIB
ADD_ONE, DOUBLE = 1_150_000, 1_250_000  # about 1.1 and 1.2 MiB: each fits alone, not both


def ensemble_measuring(
    tmp_path: Path, sizes: dict[str, list[int]], budget: int = BUDGET
) -> tuple[ModelLoads, MeteredManager]:
    """add_one and double (lazy, 500-byte files), ens over both, and any other lazy model in
    `sizes`; each load grows the fake meter by the next size listed for its model."""
    for name in sizes:
        if name != "ens":
            model(tmp_path, name, 500)
    (tmp_path / "ens" / "1").mkdir(parents=True)
    (tmp_path / "ens" / "config.pbtxt").write_text(ENS)
    fake = MeteredManager({"ens": [0] * 4, **sizes})
    loads = ModelLoads(cast(ModelManager, fake), tmp_path, budget, in_use=lambda: fake.in_use, clock=Clock())
    for name in ("ens", *sizes):
        loads.register_lazy(name)
    return loads, fake


async def test_steps_measured_over_the_budget_together_refuse_the_ensemble_for_good_from_that_request(
    tmp_path: Path,
) -> None:
    """Before: three refusals "loading model 'ens' needs about 0.0 MiB ... no idle lazy model to
    evict" (retryable), and 2.3 of 2 MiB used for good."""
    loads, fake = ensemble_measuring(tmp_path, {"add_one": [ADD_ONE] * 3, "double": [DOUBLE] * 3})
    messages = []
    for _ in range(3):
        with pytest.raises(OutgrowsMemoryBudget) as refused:
            await loads.ready("ens", 30.0)
        messages.append(str(refused.value))
        assert "needs about 0.0 MiB" not in messages[-1], messages[-1]
    assert messages[0].startswith(
        "loading ensemble 'ens' needs its step models loaded together: 'add_one' 1.1 MiB (loaded) "
        "and 'double' 1.2 MiB (loaded), 2400000 bytes (about 2.3 MiB) in all, more than the whole "
        "memory budget: model_memory_budget_mb is 2"
    ), messages[0]
    # Later requests: judged by what the loads measured, before anything loads.
    assert (
        "'add_one' about 1.1 MiB (as measured at its last load) and 'double' 1.2 MiB (loaded)" in messages[2]
    )
    assert fake.loaded == ["add_one", "double"], fake.loaded
    # The steps loaded for it went back within the budget (the least recently used step evicted).
    assert fake.evicted == ["add_one"] and loads.budget.used_bytes <= BUDGET, loads.budget.note()
    assert loads.needs_load("ens") and loads.stats.refused == 3


async def test_steps_that_fit_only_without_an_idle_lazy_model_evict_it_and_the_ensemble_loads(
    tmp_path: Path,
) -> None:
    """Under 3 MiB, idle lazy c (1 MiB measured) resident: double's load, measured over its
    estimate, evicts c as a single model's would, and the ensemble loads."""
    loads, fake = ensemble_measuring(
        tmp_path, {"add_one": [ADD_ONE], "double": [DOUBLE], "c": [MIB]}, budget=3 * MIB
    )
    await loads.ready("c", 30.0)
    await loads.ready("ens", 30.0)
    assert fake.loaded == ["c", "add_one", "double", "ens"] and fake.evicted == ["c"]
    assert loads.budget.used_bytes == ADD_ONE + DOUBLE and loads.stats.refused == 0


async def test_an_ensemble_is_never_refused_for_room_its_own_load_does_not_take(tmp_path: Path) -> None:
    """Steps that fit the budget together, beside c busy with a request (1 MiB, not evicted now):
    double's load measured over its estimate leaves 3.3 of 3 MiB used. The ensemble (0 bytes) had
    been refused "needs about 0.0 MiB ... no idle lazy model to evict"; it loads, as a single model
    measured over its estimate stays loaded (c, busy, stays too)."""
    loads, fake = ensemble_measuring(
        tmp_path, {"add_one": [ADD_ONE], "double": [DOUBLE], "c": [MIB]}, budget=3 * MIB
    )
    await loads.ready("c", 30.0)
    queued = SimpleNamespace(queued_requests=1, in_flight_batches=0)
    busy: Any = SimpleNamespace(batcher=queued, ensemble=None)
    fake.entries["c"].versions = {1: busy}
    await loads.ready("ens", 30.0)
    assert fake.loaded == ["c", "add_one", "double", "ens"] and fake.evicted == []


async def test_steps_measured_to_fit_the_budget_but_not_beside_a_pinned_model_are_refused_retryably(
    tmp_path: Path,
) -> None:
    """Pinned p (0.9 MiB) under 3 MiB: the steps' 2.3 MiB fit the budget, not beside p. Refused as
    when known before any load (an operator may unload p), and back within the budget."""
    loads, fake = ensemble_measuring(
        tmp_path, {"add_one": [ADD_ONE] * 2, "double": [DOUBLE] * 2}, budget=3 * MIB
    )
    model(tmp_path, "p", 500, config="")
    fake.sizes["p"] = [900_000]
    await loads.load("p")
    for _ in range(2):
        with pytest.raises(MemoryBudgetExceeded) as refused:
            await loads.ready("ens", 30.0)
        assert not isinstance(refused.value, OutgrowsMemoryBudget), refused.value
        assert "beside the models never evicted ('p' 0.9 MiB" in str(refused.value), refused.value
    assert fake.loaded == ["p", "add_one", "double"] and loads.budget.used_bytes <= 3 * MIB
