"""Only a load measured while no model ran makes the permanent OUTGROWS_MEMORY_BUDGET verdict.

A footprint is the process heap's growth over a load; another model's run during it adds (its
first run allocates onnxruntime's arena chunk: +1.03 MiB for the demo MLP). Under churn a 0.45
MiB MLP (mlp_c) was measured 1.5 MiB at its first two loads, both overlapping another model's first
run, and was refused for good under a 1 MiB budget. The meter here is fake: each load grows it by
the next size listed for the model, and a load listed noisy has another model's batch run during it
(the runs count the server's batchers share, batcher/run_count.py).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import cast

import pytest

from batcher import BatchingPolicy, DynamicBatcher, ModelStats
from batcher.run_count import RunCount
from server.errors import OutgrowsMemoryBudget
from server.models.lazy import ModelLoads
from server.models.manager import ModelManager
from server.models.memory_budget import MemoryBudget
from server.models.repository import ModelSource
from tests.support.thread_guard import shut_down_pools
from tests.unit.test_batcher_dynamic import BlockingBackend, result, turns_until, x
from tests.unit.test_footprint_noise import BUDGET, MeteredManager
from tests.unit.test_lazy_loads import Clock, model

QUIET, NOISY = False, True
OVER, WITHIN = 150_000, 60_000  # bytes measured, against BUDGET (100,000); files are 20,000


Listed = dict[str, list[tuple[int, bool]]]  # each model's loads: (bytes measured, noisy)


class RunsDuringLoads(MeteredManager):
    """MeteredManager whose loads listed NOISY run another model's batch while they load."""

    def __init__(self, loads: Listed, runs: RunCount) -> None:
        super().__init__({name: [size for size, _ in listed] for name, listed in loads.items()})
        self.noisy = {name: [noisy for _, noisy in listed] for name, listed in loads.items()}
        self.runs = runs

    async def load(self, name: str, source: ModelSource | None = None, keep_unchanged: bool = False) -> None:
        if self.noisy[name].pop(0):  # another model's first run, during this load's measure
            self.runs.started += 1
            self.runs.ended += 1
        await super().load(name, source, keep_unchanged)


def loads_over(tmp_path: Path, listed: Listed) -> tuple[ModelLoads, RunsDuringLoads]:
    for name in listed:
        model(tmp_path, name, 20_000)  # the files fit the budget
    runs = RunCount()
    fake = RunsDuringLoads(listed, runs)
    loads = ModelLoads(
        cast(ModelManager, fake), tmp_path, BUDGET, in_use=lambda: fake.in_use, clock=Clock(), runs=runs
    )
    for name in listed:
        loads.register_lazy(name)
    return loads, fake


async def test_two_noisy_measurements_over_the_budget_are_no_verdict(tmp_path: Path) -> None:
    """c measured over the budget at its first two loads, other models running during both: it is
    loaded again (it had been refused OUTGROWS for good), and measures within the budget quietly."""
    loads, fake = loads_over(
        tmp_path, {"c": [(OVER, NOISY), (OVER, NOISY), (WITHIN, QUIET)], "b": [(WITHIN, QUIET)] * 2}
    )
    for name in "cbcbc":
        await loads.ready(name, 30.0)
    assert fake.loaded == list("cbcbc") and loads.stats.refused == 0


async def test_two_quiet_measurements_over_the_budget_are_a_verdict(tmp_path: Path) -> None:
    """A truly big model (files within the budget) measured over it at two quiet loads is refused
    OUTGROWS_MEMORY_BUDGET at once from then on, without a load."""
    loads, fake = loads_over(tmp_path, {"big": [(OVER, QUIET), (160_000, QUIET)], "b": [(WITHIN, QUIET)] * 2})
    for name in ("big", "b", "big", "b"):
        await loads.ready(name, 30.0)
    with pytest.raises(OutgrowsMemoryBudget, match=r"needs 150000 bytes .*the smallest of its last 2 loads'"):
        await loads.ready("big", 30.0)
    assert fake.loaded == ["big", "b", "big", "b"] and loads.stats.refused == 1


async def test_a_noisy_measurement_between_quiet_ones_does_not_count_toward_the_verdict(
    tmp_path: Path,
) -> None:
    """quiet over, noisy over, quiet over: the verdict comes after the second QUIET load (the third
    load), not after the second load (the noisy one had counted)."""
    big = [(OVER, QUIET), (OVER, NOISY), (OVER, QUIET)]
    loads, fake = loads_over(tmp_path, {"big": big, "b": [(WITHIN, QUIET)] * 3})
    for name in ("big", "b", "big", "b", "big", "b"):
        await loads.ready(name, 30.0)
    with pytest.raises(OutgrowsMemoryBudget):
        await loads.ready("big", 30.0)
    assert fake.loaded == ["big", "b", "big", "b", "big", "b"] and loads.stats.refused == 1


async def test_the_load_line_says_when_other_models_ran_during_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    loads, _ = loads_over(tmp_path, {"a": [(WITHIN, NOISY)], "b": [(WITHIN, QUIET)]})
    with caplog.at_level(logging.INFO, logger="server.models.lazy"):
        await loads.ready("a", 30.0)
        await loads.ready("b", 30.0)
    lines = [r.getMessage() for r in caplog.records if "loaded in" in r.getMessage()]
    assert len(lines) == 2
    assert "(files 0.0 MiB; other models ran during it)" in lines[0]
    assert lines[1].startswith("model b loaded") and "ran during it" not in lines[1]


def test_a_noisy_measurement_feeds_the_estimate_but_no_verdict() -> None:
    budget = MemoryBudget(BUDGET)
    budget.remember("a", "v1", OVER, quiet=False)
    budget.remember("a", "v1", 160_000, quiet=False)
    measured = budget.measured("a", "v1")
    assert measured is not None and measured.bytes == OVER and not measured.outgrows(BUDGET)
    budget.remember("a", "v1", 170_000, quiet=True)
    budget.remember("a", "v1", 30_000, quiet=False)  # smaller (other work freed): still no verdict-maker
    measured = budget.measured("a", "v1")
    assert measured is not None and measured.bytes == 30_000 and not measured.outgrows(BUDGET)
    budget.remember("a", "v1", 180_000, quiet=True)
    measured = budget.measured("a", "v1")
    assert measured is not None and (measured.quiet_times, measured.quiet_smallest) == (2, 170_000)
    assert measured.outgrows(BUDGET)


async def test_the_batchers_share_one_exact_count_of_runs_inline_and_in_the_executor() -> None:
    """A run in flight when a window opens, or begun in it, makes the window noisy; runs of every
    batcher sharing the count (executor and inline fast path) are counted."""
    runs = RunCount()
    backends = [BlockingBackend(), BlockingBackend()]
    policy = BatchingPolicy(max_batch_size=8)
    batchers = [DynamicBatcher([b], policy, ModelStats(), inline_max_s=1.0, run_count=runs) for b in backends]
    for b in batchers:
        b.start()
    try:
        mark = runs.mark()
        assert runs.none_since(mark)
        await result(batchers[0].submit(x(1), 1))  # through the executor (its cost unknown yet)
        assert (runs.started, runs.ended) == (1, 1) and not runs.none_since(mark)
        assert batchers[0].run_now(x(2), batchers[0].admission(1)) is not None  # inline, now cheap
        assert (runs.started, runs.ended) == (2, 2)
        hold = backends[1].hold = threading.Event()
        task = asyncio.ensure_future(result(batchers[1].submit(x(3, rows=4), 4)))  # in the executor, held
        await turns_until(lambda: runs.started == 3)
        mark = runs.mark()  # a run of the other model is in flight now
        hold.set()
        await task
        assert (runs.started, runs.ended) == (3, 3) and not runs.none_since(mark)
        assert runs.none_since(runs.mark())
    finally:
        for b in batchers:
            await b.stop(drain=False, timeout_s=0.1)
        shut_down_pools(backends)
