"""The memory budget's eviction rule, with made-up sizes (no real measurement)."""

from __future__ import annotations

from server.models.memory_budget import MIB, MemoryBudget


def idle(name: str) -> bool:
    return False


def budget_of(limit_mib: int, *models: tuple[str, int, bool, float]) -> MemoryBudget:
    budget = MemoryBudget(limit_mib * MIB)
    for name, mib, pinned, used in models:
        budget.record(name, mib * MIB, pinned=pinned, now=used)
    return budget


def test_a_load_that_fits_evicts_nothing() -> None:
    budget = budget_of(100, ("a", 30, False, 1.0), ("b", 30, False, 2.0))
    assert budget.victims(40 * MIB, idle) == []


def test_the_least_recently_used_goes_first_and_only_as_many_as_needed() -> None:
    budget = budget_of(100, ("a", 30, False, 1.0), ("b", 30, False, 2.0), ("c", 30, False, 3.0))
    budget.touch("a", 4.0)  # a request for a: b is now the least recently used
    assert budget.victims(20 * MIB, idle) == ["b"]
    assert budget.victims(50 * MIB, idle) == ["b", "c"]


def test_pinned_and_busy_models_are_never_chosen() -> None:
    budget = budget_of(100, ("pinned", 40, True, 0.0), ("busy", 30, False, 1.0), ("idle", 30, False, 2.0))
    assert budget.victims(30 * MIB, lambda name: name == "busy") == ["idle"]
    # Room only by evicting the pinned or the busy model: refused.
    assert budget.victims(60 * MIB, lambda name: name == "busy") is None


def test_a_reload_does_not_count_its_own_bytes_twice_nor_evict_itself() -> None:
    budget = budget_of(100, ("a", 60, False, 1.0), ("b", 30, False, 2.0))
    assert budget.victims(60 * MIB, idle, keep="a") == []
    assert budget.victims(80 * MIB, idle, keep="a") == ["b"]


def test_no_limit_never_evicts() -> None:
    budget = budget_of(0, ("a", 10_000, False, 1.0))
    assert budget.victims(10_000 * MIB, idle) == []


def test_forget_frees_the_bytes() -> None:
    budget = budget_of(100, ("a", 60, False, 1.0))
    budget.forget("a")
    assert budget.used_bytes == 0 and budget.victims(100 * MIB, idle) == []


def test_best_effort_evicts_every_idle_lazy_model_when_that_is_not_enough() -> None:
    """After a load measured over the budget: nothing was evicted when evicting all would not bring
    it under (a 127 MiB model beside an idle 12.6 MiB one, budget 120 MiB)."""
    budget = budget_of(120, ("big", 127, False, 3.0), ("small", 12, False, 1.0), ("pinned", 5, True, 2.0))
    assert budget.victims(127 * MIB, idle, keep="big") is None
    assert budget.victims(127 * MIB, idle, keep="big", best_effort=True) == ["small"]
    assert budget.victims(110 * MIB, idle, keep="big", best_effort=True) == ["small"]  # enough: as before
