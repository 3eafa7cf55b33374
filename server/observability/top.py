"""`sluiceway top`: a live table of every model from a running server, refreshed in place.

Per model version: requests/s, p50 and p99 latency, average batch, queue depth, deadline misses
and cost. Counts come from ModelStatistics over gRPC (any KServe v2 / Triton server answers it);
latency percentiles, queue depth, deadline outcomes and cost from the server's /metrics when it
has one (`--metrics-url`, default the server's host on port 8002). Each refresh shows the change
since the previous one, so the first table needs two samples `--interval` apart.

How a server is read (one gRPC channel for the whole session; `--workers N` sums the workers, every
figure from their /metrics pages, worker i on the metrics port + i) is top_reader.py's job; this
module checks the flags, turns two readings into rows and shows them. A counter that went down
between two readings (a model reloaded) is a restart: that interval shows `-`, never a negative
rate. Under `--workers N` a worker whose /metrics did not answer blanks the sums too (its queue
included): the caption says how many did not answer, and names their URLs.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from clients.security import TlsOptions, bearer_metadata
from clients.security_flags import add_security_arguments, security_flags
from server.observability.top_reader import Key, Metadata, Reader, Sample
from server.settings import MAX_WORKERS

if TYPE_CHECKING:  # rich and prometheus_client load only when `top` runs, not with every CLI start
    from rich.table import Table

HEADINGS = ("model", "version", "req/s", "p50 ms", "p99 ms", "avg batch", "queue", "misses", "$/M inf")
RESET_NOTE = "-: not counted this interval (a counter went down: the model was reloaded)"


def add_top_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    top = commands.add_parser("top", help="a live table of a running server's models")
    top.add_argument("--target", default="127.0.0.1:8001", help="the server's gRPC HOST:PORT")
    top.add_argument("--metrics-url", help="its /metrics (default: http://HOST:8002/metrics)")
    top.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    top.add_argument("--once", action="store_true", help="print one table (two samples) and exit")
    top.add_argument("--workers", type=int, default=1,
                     help="the server's `serve --workers N`: sum all N from /metrics (worker i on the "
                          "--metrics-url port + i); 1 reads one server process")  # fmt: skip
    # The load-test harness's flags, same meaning (README "Security"); /metrics is plain HTTP.
    add_security_arguments(top, "security (the gRPC connection)")


def security_of(args: argparse.Namespace) -> tuple[TlsOptions | None, Metadata]:
    """TLS options (None: plaintext) and the token's metadata; ValueError naming the flag."""
    flags = security_flags(args)
    return flags.tls_options(), bearer_metadata(flags.token)


MIN_INTERVAL_S, MAX_INTERVAL_S = 0.1, 86400.0


def interval_of(seconds: float) -> float:
    """--interval, checked: inf had ended in time.sleep's OverflowError, and -1 or nan had been
    raised to 0.1 s without a word."""
    if not (math.isfinite(seconds) and MIN_INTERVAL_S <= seconds <= MAX_INTERVAL_S):
        limits = f"{MIN_INTERVAL_S:g} to {MAX_INTERVAL_S:g}"
        raise ValueError(f"--interval must be {limits} seconds, not {seconds:g}")
    return seconds


def target_of(text: str) -> str:
    """--target, checked: '' had printed grpc core's "Source Location Trace" block, exit 1."""
    if not text.strip():
        raise ValueError("--target must not be empty (the server's gRPC HOST:PORT)")
    return text


def metrics_url_of(url: str) -> str:
    """--metrics-url, checked: urllib opens file:// too (the caption had shown a file's first line)."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise ValueError(f"--metrics-url must be an http:// or https:// URL, not {url!r}")
    return url


def worker_urls(url: str, workers: int) -> list[str]:
    """Each worker's /metrics: worker i serves the first one's port + i (`serve --workers N`); as
    many workers as serve takes (70000 had polled 70,016 URLs, ports past 65535 among them)."""
    if not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"--workers must be 1 to {MAX_WORKERS} (as `serve --workers`), not {workers}")
    if workers == 1:
        return [url]
    parts = urllib.parse.urlsplit(url)
    if parts.port is None or parts.hostname is None:
        raise ValueError(f"--workers {workers} needs a host and port in --metrics-url, not {url!r}")
    if parts.port + workers - 1 > 65535:  # serve's own rule for its workers' metrics ports
        raise ValueError(
            f"--workers {workers} with --metrics-url port {parts.port}: worker i is on port + i, and "
            f"{parts.port + workers - 1} is above 65535"
        )
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return [parts._replace(netloc=f"{host}:{parts.port + i}").geturl() for i in range(workers)]


def bucket_counts(before: Mapping[float, float], after: Mapping[float, float]) -> dict[float, float]:
    """What a cumulative histogram counted between two readings, per bucket (negative: reset)."""
    return {bound: after[bound] - before.get(bound, 0.0) for bound in after}


def quantile(counts: Mapping[float, float], q: float) -> float | None:
    """The q-quantile (0-1) of cumulative bucket counts, as the upper bound of the bucket it falls
    in; None when nothing was counted or a count is negative (a reset)."""
    bounds = sorted(counts)
    total = counts[bounds[-1]] if bounds else 0.0
    if total <= 0 or any(counts[b] < 0 for b in bounds):
        return None
    return next((b for b in bounds if counts[b] >= q * total), bounds[-1])


def percentile(before: Mapping[float, float], after: Mapping[float, float], q: float) -> float | None:
    """The q-quantile of what was counted between two readings (None across a reset)."""
    return quantile(bucket_counts(before, after), q)


@dataclass(frozen=True)
class Counted:
    """What one server process counted for one model version between two readings."""

    rate: float
    rows: int
    runs: int
    buckets: dict[float, float] | None  # None: its /metrics was not read
    misses: float | None


def counted(before: Sample, after: Sample, key: Key) -> Counted | None:
    """None when the interval cannot be counted: a counter went down (the model was reloaded
    between the readings; Prometheus's rate() takes a drop as a reset too) or was not read."""
    if before.counts_error or after.counts_error:
        return None
    success = after.success[key] - before.success.get(key, 0)
    done = after.rows.get(key, 0) - before.rows.get(key, 0)
    runs = after.runs.get(key, 0) - before.runs.get(key, 0)
    scraped = before.metrics_error is None and after.metrics_error is None
    hist = None
    if scraped and key in after.buckets:
        hist = bucket_counts(before.buckets.get(key, {}), after.buckets[key])
    misses = after.misses[key] - before.misses.get(key, 0.0) if scraped and key in after.misses else None
    if min(success, done, runs, misses or 0.0, *(hist or {}).values()) < 0:
        return None
    return Counted(success / max(after.at - before.at, 1e-9), done, runs, hist, misses)


@dataclass(frozen=True)
class Row:
    model: str
    version: str
    rate: float | None  # None: not counted this interval (a reset, or counts not read)
    p50_us: float | None
    p99_us: float | None
    batch: float | None
    queue: float | None
    misses: float | None
    cost: float | None


def _summed(parts: Sequence[Counted], key: Key, queue: float | None, cost: float | None) -> Row:
    """One row from every process's count: rates, rows, runs, misses and histograms add up."""
    rows_, runs = sum(p.rows for p in parts), sum(p.runs for p in parts)
    hists = [p.buckets for p in parts if p.buckets is not None]
    hist: dict[float, float] | None = None
    if hists and len(hists) == len(parts):
        hist = {b: sum(h.get(b, 0.0) for h in hists) for b in set().union(*hists)}
    misses = [p.misses for p in parts if p.misses is not None]
    return Row(
        model=key[0],
        version=key[1],
        rate=sum(p.rate for p in parts),
        p50_us=quantile(hist, 0.5) if hist else None,
        p99_us=quantile(hist, 0.99) if hist else None,
        batch=rows_ / runs if runs > 0 else None,
        queue=queue,
        misses=sum(misses) if misses and len(misses) == len(parts) else None,
        cost=cost,
    )


def rows_of_workers(before: Sequence[Sample], after: Sequence[Sample]) -> list[Row]:
    """A row per model version, summed over the server processes read (before[i] and after[i]
    are process i's readings); a version one of them could not count reads `-`."""
    table = []
    for key in sorted({key for sample in after for key in sample.success}):
        parts = [
            counted(b, a, key)
            for b, a in zip(before, after, strict=True)
            if key in a.success or a.counts_error or b.counts_error
        ]
        # A sum over the workers read: with one unread it is no total (the cost is a mean: kept).
        queues = [] if unread(after) else [a.queue[key] for a in after if key in a.queue]
        costs = [a.cost[key] for a in after if key in a.cost]  # per inference: the mean, not a sum
        queue = sum(queues) if queues else None
        cost = sum(costs) / len(costs) if costs else None
        known = [p for p in parts if p is not None]
        if len(known) < len(parts):
            table.append(Row(key[0], key[1], None, None, None, None, queue, None, cost))
        else:
            table.append(_summed(known, key, queue, cost))
    return table


def rows(before: Sample, after: Sample) -> list[Row]:
    return rows_of_workers([before], [after])


def unread(samples: Sequence[Sample]) -> set[int]:
    """Which processes' counts could not be read (under `--workers N`: their /metrics did not answer)."""
    return {i for i, sample in enumerate(samples) if sample.counts_error}


def caption(
    table: Sequence[Row], before: Sequence[Sample], after: Sequence[Sample], metrics_urls: Sequence[str]
) -> str:
    """What the figures are, why a row reads `-`, and each /metrics page that did not answer."""
    if len(after) == 1:
        notes = ["one server process (for `serve --workers N`, pass --workers N to sum them)"]
    else:
        notes = [f"sum of {len(after)} workers' /metrics, from {metrics_urls[0]} on"]
    missing = unread(before) | unread(after)
    if missing:  # not a reset: a worker's counts are missing, so no sum is whole
        notes.append(f"-: not counted this interval ({len(missing)} of {len(after)} workers did not answer)")
    elif any(r.rate is None for r in table):
        notes.append(RESET_NOTE)
    for now, then in zip(after, before, strict=True):
        if now.metrics_error or then.metrics_error:
            notes.append(now.metrics_error or f"{then.metrics_error} (at the previous reading)")
    return "\n".join(notes)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render(table: Iterable[Row], note: str | None = None) -> Table:
    from rich.table import Table

    out = Table(title="sluiceway top", caption=note)
    for heading in HEADINGS:
        out.add_column(heading, justify="left" if heading in ("model", "version") else "right")
    for r in table:
        out.add_row(
            r.model,
            r.version,
            _fmt(r.rate, ".1f"),
            _fmt(None if r.p50_us is None else r.p50_us / 1e3, ".2f"),
            _fmt(None if r.p99_us is None else r.p99_us / 1e3, ".2f"),
            _fmt(r.batch, ".2f"),
            _fmt(r.queue, ".0f"),
            _fmt(r.misses, ".0f"),
            _fmt(r.cost, ".4f"),
        )
    return out


def _rpc_error(target: str, exc: grpc.RpcError, metadata: Metadata) -> str:
    """Its code and details, not grpc's whole debug string; the option a refusal asks for."""
    code, details = exc.code(), exc.details()
    line = f"sluiceway top: {target}: {code.name if code else 'error'}: {details}"
    if code == grpc.StatusCode.UNAUTHENTICATED and not metadata:
        line += " (the server wants a bearer token: pass --token-file or --token)"
    return line


def run_top(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    host = args.target.rsplit(":", 1)[0]
    try:
        tls, metadata = security_of(args)
        target_of(args.target)
        urls = worker_urls(metrics_url_of(args.metrics_url or f"http://{host}:8002/metrics"), args.workers)
        interval = interval_of(args.interval)
    except ValueError as exc:
        print(f"sluiceway top: {exc}", file=sys.stderr)
        return 2

    def view(before: list[Sample], after: list[Sample]) -> Table:
        table = rows_of_workers(before, after)
        return render(table, caption(table, before, after, urls))

    with contextlib.closing(Reader(args.target, urls, tls, metadata)) as reader:
        try:
            before = reader.read()
            time.sleep(interval)  # the refresh period of a display, not synchronisation
            after = reader.read()
            if args.once:
                Console().print(view(before, after))
                return 0
            with Live(view(before, after), refresh_per_second=4) as live:
                while True:
                    time.sleep(interval)
                    before, after = after, reader.read()
                    live.update(view(before, after))
        except grpc.RpcError as exc:
            print(_rpc_error(args.target, exc, metadata), file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 0
