"""The loader's series on /metrics (server/models/lazy.py counts them): loads, evictions, refusals,
and the memory budget's figures."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from server.models.memory_budget import MemoryBudget

Gauge = tuple[str, Mapping[str, str], float]
# The kind and HELP of each name gauge_values yields (server/observability/metrics.py's Catalog).
METRICS = {
    "sluiceway_model_loads_total": ("counter", "Model loads that completed (any trigger)"),
    "sluiceway_model_lazy_loads_total": ("counter", "Loads started by a lazy model's request"),
    "sluiceway_model_load_failures_total": ("counter", "Loads that failed (config, files or backend)"),
    "sluiceway_model_evictions_total": ("counter", "Lazy models unloaded to fit the memory budget"),
    "sluiceway_model_load_refusals_total": ("counter", "Loads refused: the model does not fit the budget"),
    "sluiceway_model_memory_budget_bytes": ("gauge", "The memory budget for loaded models (0: none)"),
    "sluiceway_model_memory_used_bytes": ("gauge", "Measured footprint of the models loaded now"),
    "sluiceway_model_footprint_bytes": ("gauge", "Measured footprint of a loaded model"),
}


@dataclass
class LoadStats:
    loads: int = 0  # successful loads of any kind
    lazy_loads: int = 0  # of which started by a first request
    failures: int = 0
    evictions: int = 0
    refused: int = 0  # loads refused: the budget could not make room


def load_gauges(stats: LoadStats, budget: MemoryBudget) -> Iterator[Gauge]:
    """What ModelLoads.gauge_values yields."""
    yield "sluiceway_model_loads_total", {}, float(stats.loads)
    yield "sluiceway_model_lazy_loads_total", {}, float(stats.lazy_loads)
    yield "sluiceway_model_load_failures_total", {}, float(stats.failures)
    yield "sluiceway_model_evictions_total", {}, float(stats.evictions)
    yield "sluiceway_model_load_refusals_total", {}, float(stats.refused)
    yield "sluiceway_model_memory_budget_bytes", {}, float(budget.limit_bytes)
    yield "sluiceway_model_memory_used_bytes", {}, float(budget.used_bytes)
    for resident in budget.residents():
        yield "sluiceway_model_footprint_bytes", {"model": resident.name}, float(resident.bytes)
