"""Server-side figures from a sluiceway server's Prometheus /metrics, for the load-test report.

Read at the edges of each measurement window, like ModelStatistics: counters become deltas over
the window (deadline outcomes, why batches were dispatched), gauges are read at its end (CPU per
inference, cost per million inferences, queue depth). Any server without /metrics simply has none.
"""

from __future__ import annotations

import urllib.error
import urllib.request

Figures = tuple[tuple[str, float], ...]
# Figures read at the window's end rather than subtracted (their names start with this).
GAUGE = "gauge_"
_TIMEOUT_S = 5.0


def parse(text: str, model: str) -> Figures:
    """This model's figures (all versions) from Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families

    figures: dict[str, float] = {}

    def add(key: str, value: float) -> None:
        figures[key] = figures.get(key, 0.0) + value

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            name, labels = sample.name, sample.labels
            if name in ("sluiceway_deadline_outcome_total", "sluiceway_deadline_outcome"):
                add(f"deadline_{labels.get('outcome', '')}", sample.value)
            elif name in ("sluiceway_batch_dispatch_total", "sluiceway_batch_dispatch"):
                add(f"dispatch_{labels.get('reason', '')}", sample.value)
            elif name in ("sluiceway_padded_shape_changes_total", "sluiceway_padded_shape_changes"):
                add("padded_shape_changes", sample.value)  # each a cuDNN plan build on the GPU
            elif name in ("sluiceway_shared_session_runs_total", "sluiceway_shared_session_runs"):
                add("shared_runs", sample.value)  # the session host's: the same on every worker
            elif name in ("sluiceway_shared_session_rows_total", "sluiceway_shared_session_rows"):
                add("shared_rows", sample.value)
            elif name == "sluiceway_cpu_seconds_per_inference":
                add(f"{GAUGE}cpu_us_per_inference", sample.value * 1e6)
            elif name == "sluiceway_cost_per_million_inferences":
                add(f"{GAUGE}cost_per_million_inferences", sample.value)
            elif name == "sluiceway_queue_requests":
                add(f"{GAUGE}queue_requests", sample.value)
    return tuple(sorted(figures.items()))


# A /metrics page: some 14 KB a model version, so this is thousands (top_reader's bound).
MAX_PAGE_BYTES = 64 << 20


def read(url: str, model: str) -> Figures:
    """The model's figures from `url`; none when it cannot be read (the run goes on without)."""
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as reply:
            page = reply.read(MAX_PAGE_BYTES + 1)  # an endless body had grown memory without end
        return () if len(page) > MAX_PAGE_BYTES else parse(page.decode("utf-8"), model)
    except (urllib.error.URLError, OSError, ValueError):
        return ()


def padded_shape_changes(url: str | None, model: str) -> float | None:
    """The model's padded shape changes so far (each a cuDNN plan build on the GPU): None where it
    does not pad, or without a /metrics to read."""
    return None if url is None else dict(read(url, model)).get("padded_shape_changes")


def difference(end: Figures, start: Figures) -> Figures:
    """Counters as deltas (end - start), gauges as read at the end."""
    before = dict(start)
    return tuple((k, v if k.startswith(GAUGE) else v - before.get(k, 0.0)) for k, v in end)


def total(deltas: list[Figures]) -> dict[str, float]:
    """Several windows' figures together: counters summed, gauges from the last window."""
    merged: dict[str, float] = {}
    for figures in deltas:
        for key, value in figures:
            merged[key] = value if key.startswith(GAUGE) else merged.get(key, 0.0) + value
    return {k: round(v, 4) for k, v in sorted(merged.items())}
