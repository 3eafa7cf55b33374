"""`sluiceway top`: a live table of every model from a running server, refreshed in place.

Per model version: requests/s, p50 and p99 latency, average batch, queue depth, deadline misses
and cost. Counts come from ModelStatistics over gRPC (any KServe v2 / Triton server answers it);
latency percentiles, queue depth, deadline outcomes and cost from the server's /metrics when it
has one (`--metrics-url`, default the server's host on port 8002). Each refresh shows the change
since the previous one, so the first table needs two samples `--interval` apart.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc

if TYPE_CHECKING:  # rich and prometheus_client load only when `top` runs, not with every CLI start
    from rich.table import Table

Key = tuple[str, str]  # (model, version)
MISSES = ("shed", "expired", "late")


@dataclass
class Sample:
    """One reading of the server: cumulative counters per model version."""

    at: float
    success: dict[Key, int] = field(default_factory=dict)
    rows: dict[Key, int] = field(default_factory=dict)
    runs: dict[Key, int] = field(default_factory=dict)
    # From /metrics (empty without it): latency histogram buckets (upper bound µs -> count).
    buckets: dict[Key, dict[float, float]] = field(default_factory=dict)
    queue: dict[Key, float] = field(default_factory=dict)
    misses: dict[Key, float] = field(default_factory=dict)
    cost: dict[Key, float] = field(default_factory=dict)
    metrics_error: str | None = None


def add_top_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    top = commands.add_parser("top", help="a live table of a running server's models")
    top.add_argument("--target", default="127.0.0.1:8001", help="the server's gRPC HOST:PORT")
    top.add_argument("--metrics-url", help="its /metrics (default: http://HOST:8002/metrics)")
    top.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    top.add_argument("--once", action="store_true", help="print one table (two samples) and exit")


def read_statistics(target: str, timeout_s: float = 5.0) -> Sample:
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        response = stub.ModelStatistics(pb.ModelStatisticsRequest(), timeout=timeout_s)
    return sample_of(response, time.monotonic())


def sample_of(response: pb.ModelStatisticsResponse, at: float) -> Sample:
    """Requests answered OK (success counts cache hits already, as Triton's does: adding them
    again showed a cached model at twice its rate), rows computed and runs, per version."""
    sample = Sample(at=at)
    for stats in response.model_stats:
        key = (stats.name, stats.version)
        sample.success[key] = stats.inference_stats.success.count
        sample.rows[key] = stats.inference_count
        sample.runs[key] = stats.execution_count
    return sample


def add_metrics(sample: Sample, text: str) -> None:
    """Fold the server's Prometheus text into `sample` (unknown metrics are ignored)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = s.labels
            key = (labels.get("model", ""), labels.get("version", ""))
            if s.name == "sluiceway_request_duration_us_bucket":
                bound = float(labels["le"])
                sample.buckets.setdefault(key, {})[bound] = s.value
            elif s.name == "sluiceway_queue_requests":
                sample.queue[key] = s.value
            elif s.name in ("sluiceway_deadline_outcome_total", "sluiceway_deadline_outcome"):
                if labels.get("outcome") in MISSES:
                    sample.misses[key] = sample.misses.get(key, 0.0) + s.value
            elif s.name == "sluiceway_cost_per_million_inferences":
                sample.cost[key] = s.value


def read_metrics(url: str, sample: Sample, timeout_s: float = 5.0) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:  # the operator's URL
            add_metrics(sample, reply.read().decode("utf-8"))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        sample.metrics_error = f"{url}: {exc}"


def percentile(before: Mapping[float, float], after: Mapping[float, float], q: float) -> float | None:
    """The q-quantile (0-1) of what a cumulative histogram counted between two readings, as the
    upper bound of the bucket it falls in (None when nothing was counted)."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return None
    for bound, count in zip(bounds, counts, strict=True):
        if count >= q * total:
            return bound
    return bounds[-1]


@dataclass(frozen=True)
class Row:
    model: str
    version: str
    rate: float
    p50_us: float | None
    p99_us: float | None
    batch: float | None
    queue: float | None
    misses: float | None
    cost: float | None


def rows(before: Sample, after: Sample) -> list[Row]:
    dt = max(after.at - before.at, 1e-9)
    table = []
    for key in sorted(after.success):
        runs = after.runs[key] - before.runs.get(key, 0)
        hist_before, hist_after = before.buckets.get(key, {}), after.buckets.get(key)
        table.append(
            Row(
                model=key[0],
                version=key[1],
                rate=(after.success[key] - before.success.get(key, 0)) / dt,
                p50_us=percentile(hist_before, hist_after, 0.5) if hist_after else None,
                p99_us=percentile(hist_before, hist_after, 0.99) if hist_after else None,
                batch=(after.rows[key] - before.rows.get(key, 0)) / runs if runs > 0 else None,
                queue=after.queue.get(key),
                misses=after.misses[key] - before.misses.get(key, 0.0) if key in after.misses else None,
                cost=after.cost.get(key),
            )
        )
    return table


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render(table: Iterable[Row], note: str | None = None) -> Table:
    from rich.table import Table

    out = Table(title="sluiceway top", caption=note)
    for heading in (
        "model",
        "version",
        "req/s",
        "p50 ms",
        "p99 ms",
        "avg batch",
        "queue",
        "misses",
        "$/M inf",
    ):
        out.add_column(heading, justify="left" if heading in ("model", "version") else "right")
    for r in table:
        out.add_row(
            r.model,
            r.version,
            f"{r.rate:.1f}",
            _fmt(None if r.p50_us is None else r.p50_us / 1e3, ".2f"),
            _fmt(None if r.p99_us is None else r.p99_us / 1e3, ".2f"),
            _fmt(r.batch, ".2f"),
            _fmt(r.queue, ".0f"),
            _fmt(r.misses, ".0f"),
            _fmt(r.cost, ".4f"),
        )
    return out


def run_top(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    host = args.target.rsplit(":", 1)[0]
    url = args.metrics_url or f"http://{host}:8002/metrics"
    interval = max(0.1, float(args.interval))

    def sample() -> Sample:
        s = read_statistics(args.target)
        read_metrics(url, s)
        return s

    try:
        before = sample()
        time.sleep(interval)  # the refresh period of a display, not synchronisation
        after = sample()
        if args.once:
            Console().print(render(rows(before, after), after.metrics_error))
            return 0
        with Live(render(rows(before, after), after.metrics_error), refresh_per_second=4) as live:
            while True:
                time.sleep(interval)
                before, after = after, sample()
                live.update(render(rows(before, after), after.metrics_error))
    except grpc.RpcError as exc:  # its code and details, not grpc's whole debug string
        code, details = exc.code(), exc.details()
        print(f"sluiceway top: {args.target}: {code.name if code else 'error'}: {details}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
