"""An ensemble's step models judged together against the memory budget before any of them loads.

Its steps must all be loaded at once (server/models/eviction_guard.py holds them through its load),
so when their estimates together pass the whole budget no eviction can ever make room: the load is
refused OUTGROWS_MEMORY_BUDGET before its first step loads. That had been found only when its
second step's load did not fit, after the first had loaded, evicting idle models for it. Likewise,
when they fit the budget but not beside the models never evicted (not lazy, or pinned) the load is
refused at once, retryably (an operator may unload one): it had loaded and evicted on every retry.
The steps are judged again after each step's load, by what it measured (server/models/lazy.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from pathlib import Path

from protos import model_config_pb2 as mc
from server.errors import MemoryBudgetExceeded, OutgrowsMemoryBudget
from server.models.ensemble_config import is_ensemble
from server.models.footprint import files_bytes, source_key
from server.models.memory_budget import (
    LOADED,
    MemoryBudget,
    load_need,
    steps_beside_fixed,
    steps_together,
)
from server.models.repository import load_model_source

Figure = tuple[str, int, str]  # a step model, its estimated bytes, what the figure rests on


def step_models(config: mc.ModelConfig) -> list[str]:
    """The models an ensemble's steps use, each once, in step order."""
    return list(dict.fromkeys(step.model_name for step in config.ensemble_scheduling.step))


async def judge_steps(
    ensembles: list[str],
    steps: Iterable[str],
    budget: MemoryBudget,
    root: Path,
    dormant: Callable[[str], bool],
) -> None:
    """Raise OutgrowsMemoryBudget when `steps` (the step models of `ensembles`' load) need more than
    the whole budget together, MemoryBudgetExceeded (retryable) when more than it holds beside the
    models never evicted (memory_budget.steps_beside_fixed). Each is counted as a single model's
    load is judged (memory_budget.load_need: its footprint now when loaded, else what loads of its
    files measured, else their size). A step that is an ensemble itself, not loaded and not
    `dormant` (a lazy model not loaded), or whose files cannot be read now is left out: its own
    load says what it needs."""
    if budget.limit_bytes <= 0:
        return
    figures: list[Figure] = []
    for step in steps:
        figure = await _figure(step, budget, root, dormant)
        if figure is not None and figure[1] > 0:
            figures.append(figure)
    if len(figures) < 2:  # one step's own load judges it before anything loads
        return
    why = steps_together(ensembles, figures, budget)
    if why is not None:
        raise OutgrowsMemoryBudget(why)
    # Within the budget, but not beside what is never evicted: refused now, retryably (its first
    # step had loaded, evicting an idle model, before its second was refused, on every retry).
    why = steps_beside_fixed(ensembles, figures, budget)
    if why is not None:
        raise MemoryBudgetExceeded(why)


async def _figure(
    step: str, budget: MemoryBudget, root: Path, dormant: Callable[[str], bool]
) -> Figure | None:
    held = budget.size_of(step)
    if held is not None:
        return step, held, LOADED
    if not dormant(step):
        return None
    try:
        source = await asyncio.to_thread(load_model_source, root, step)
        if is_ensemble(source.config):
            return None
        files, key = await asyncio.to_thread(lambda: (files_bytes(source), source_key(source)))
    except Exception:  # its load reads it again and says what is wrong
        return None
    need, basis = load_need(None, budget.measured(step, key), files)
    return step, need, basis
