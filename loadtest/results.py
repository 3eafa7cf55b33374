"""Run records -> the results document (results.json): one entry per step and target, rounds merged.

Rates are per second of measurement window: offered = requests scheduled in it, throughput =
successful answers that arrived in it, goodput = those of them within the deadline.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from hdrh.histogram import HdrHistogram

from loadtest import server_metrics
from loadtest.runner import RunRecord, ServerTotals
from loadtest.scenario import Scenario, deadline_sent
from loadtest.stats import cdf_points, latency_summary, merge_counts, merge_histograms, rate, ratio

SCHEMA_VERSION = 1
RATIO_KEYS = ("throughput_rps", "goodput_rps", "p50", "p99")


def summarize(scenario: Scenario, records: Sequence[RunRecord], batch_size: int = 1) -> dict[str, Any]:
    groups: dict[tuple[int, str], list[RunRecord]] = {}
    for record in records:
        groups.setdefault((record.step_index, record.target.name), []).append(record)
    entries = [_entry(group, batch_size) for group in groups.values()]
    _add_ratios(entries, [t.name for t in scenario.targets])
    scenario_doc = asdict(scenario)
    scenario_doc["steps"] = [{"mode": s.mode, "level": s.level} for s in scenario.steps]
    scenario_doc["security"] = scenario.security.describe()  # never the key or the token
    return {
        "schema": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "scenario": scenario_doc,
        "targets": [asdict(t) for t in scenario.targets],
        "deadline_sent": deadline_sent(scenario),
        "results": entries,
    }


def _entry(group: list[RunRecord], batch_size: int) -> dict[str, Any]:
    first = group[0]
    counts = merge_counts(r.counts for r in group)
    seconds = sum(r.duration_s for r in group)
    histogram = merge_histograms([counts.histogram])
    latency = latency_summary(histogram)
    throughput = rate(counts.ok_in_window, seconds)
    return {
        "step": {"mode": first.step.mode, "level": first.step.level, "label": first.step.label},
        "target": first.target.name,
        "rounds": len(group),
        "duration_s": seconds,
        "offered_rps": rate(counts.scheduled, seconds),
        "throughput_rps": throughput,
        "throughput_ips": throughput * batch_size,
        "goodput_rps": rate(counts.good_in_window, seconds),
        "throughput_per_round": [rate(r.counts.ok_in_window, r.duration_s) for r in group],
        "requests": counts.scheduled,
        "ok": counts.ok,
        "errors": counts.errors,
        # Of the errors, requests that could not reach the target (its connection gone): exit 3.
        "unreachable": counts.unreachable,
        "error_messages": {code: counts.messages[code] for code in counts.errors if code in counts.messages},
        "latency_us": latency,
        # Successes after the deadline (from the scheduled time); should be 0 under a deadline.
        "late_ok": counts.ok_in_window - counts.good_in_window,
        "client_lag_us": _lag(merge_histograms([counts.lag_histogram])),
        "reject_us": _lag(merge_histograms([counts.reject_histogram])),
        # Unary successes from their send, not their scheduled time: perf_analyzer's figure.
        "latency_from_send_us": _lag(merge_histograms([counts.send_histogram])),
        "server": _server(group),
        "client_cpu": {
            "seconds": round(counts.cpu_s, 3),
            "percent_of_core": round(100.0 * counts.cpu_s / seconds, 1) if seconds else None,
            "processes": max(r.processes for r in group),
            "connections": max(r.connections for r in group),
        },
        "cdf": cdf_points(histogram),
        "ratios": {},
    }


def _lag(histogram: HdrHistogram) -> dict[str, float | None]:
    summary = latency_summary(histogram)
    return {key: summary[key] for key in ("p50", "p99", "max")}


def _server(group: list[RunRecord]) -> dict[str, Any]:
    """Average batch size and queue time from the summed deltas; blanks if any round lacked them."""
    deltas = [r.server for r in group]
    if any(d is None for d in deltas):
        return {"avg_batch_size": None, "avg_queue_us": None, "computed_rows": None, "metrics": None}
    total = ServerTotals(0, 0, 0, 0)
    for delta in deltas:
        assert delta is not None
        total = ServerTotals(
            total.inferences + delta.inferences,
            total.executions + delta.executions,
            total.queue_count + delta.queue_count,
            total.queue_ns + delta.queue_ns,
        )
    avg_batch = ratio(total.inferences, total.executions)
    avg_queue_ns = ratio(total.queue_ns, total.queue_count)
    return {
        "avg_batch_size": round(avg_batch, 3) if avg_batch is not None else None,
        "avg_queue_us": round(avg_queue_ns / 1000, 1) if avg_queue_ns is not None else None,
        # Rows the server computed in the measurement window: against the successes in it, compute
        # spent on answers that came too late to be used.
        "computed_rows": total.inferences,
        # From the server's /metrics (deadline outcomes and dispatch reasons in the window; CPU per
        # inference, cost, queue depth at its end); None where the target has no metrics URL.
        "metrics": server_metrics.total([d.metrics for d in deltas if d is not None]) or None,
    }


def _add_ratios(entries: list[dict[str, Any]], target_order: list[str]) -> None:
    """Each entry's figures over the first target's on the same step (the first gets 1.0s)."""
    base_name = target_order[0]
    bases = {(e["step"]["mode"], e["step"]["level"]): e for e in entries if e["target"] == base_name}
    for entry in entries:
        base = bases.get((entry["step"]["mode"], entry["step"]["level"]))
        if base is None:
            continue
        entry["ratios"] = {
            key: _rounded(ratio(_figure(entry, key), _figure(base, key))) for key in RATIO_KEYS
        }


def _figure(entry: dict[str, Any], key: str) -> float | None:
    value = entry["latency_us"][key] if key in ("p50", "p99") else entry[key]
    return None if value is None else float(value)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
