"""Cumulative statistics only ever grow, at every step: the metrics thread reads them between any
two bytecodes of the event loop's thread, and a series that went down between two scrapes reads
as a counter reset to Prometheus's rate(). Helpers and `make` are test_mutants_dynamic.py's."""

from __future__ import annotations

from typing import Any

import pytest

from batcher import DeadlineExceeded, ModelStats
from tests.unit.test_mutants_dynamic import Clock, Make, make, x
from tests.unit.test_mutants_dynamic_stats import Slow, cheap

__all__ = ["make"]  # the fixture, imported for pytest


class Watched(ModelStats):
    """ModelStats remembering every value `inference_count` took, in order."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "inference_count":
            self.__dict__.setdefault("seen", []).append(value)
        super().__setattr__(name, value)


async def test_a_fast_run_that_ends_late_never_counts_its_rows(make: Make) -> None:
    """Its rows had been added with the run, then taken back once it was found late: 0, 1, 0."""
    clock, stats = Clock(), Watched()
    b = make(Slow(clock), clock=clock, stats=stats, inline_max_s=1.0)
    cheap(b, clock.now, 1)
    with pytest.raises(DeadlineExceeded, match=r"^deadline exceeded while the request was being computed$"):
        await b.submit(x(1), 1, deadline=clock.now + 1.0)
    seen: list[int] = stats.__dict__["seen"]
    assert seen == sorted(seen), seen
    figures = (stats.inference_count, stats.compute_infer.count, stats.execution_count, stats.late)
    assert figures == (0, 0, 1, 1)
    assert await b.submit(x(2), 1) is not None  # and an answered one counts, once
    assert (stats.inference_count, stats.compute_infer.count, stats.execution_count) == (1, 1, 2)
    assert stats.__dict__["seen"][-1] == 1
