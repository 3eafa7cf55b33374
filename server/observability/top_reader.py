"""Reading a running server for `sluiceway top`: one Sample (cumulative counters per model
version) per server process each time.

With one process to read, the counts come from ModelStatistics over ONE gRPC channel kept for the
whole session (any KServe v2 / Triton server answers it), and latency buckets, queue depth,
deadline misses and cost from its /metrics page when it has one. Under `serve --workers N` the
kernel hands each new connection to any worker, each with its own counters, and a channel per
reading had mixed them (a steady 350/s read 348, 100, 87, -69): `--workers N` reads every figure
from each worker's own /metrics page instead.
"""

from __future__ import annotations

import http.client
import time
import urllib.error
from dataclasses import dataclass, field

import grpc

from clients.security import TlsOptions
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from protos.regular_files import size_limit
from server.observability.page_fetch import PageTooLarge, PageTooSlow, fetch_page

Key = tuple[str, str]  # (model, version)
Metadata = tuple[tuple[str, str], ...]
MISSES = ("shed", "expired", "late")  # the deadline outcomes counted as misses
# A server's /metrics page: some 14 KB a model version (41 KB for three), so this is thousands.
MAX_METRICS_PAGE_BYTES = 64 << 20


@dataclass
class Sample:
    """One reading of one server process: cumulative counters per model version."""

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
    counts_error: str | None = None  # the counts could not be read (from /metrics under --workers)


class Reader:
    """Reads a server for a whole session. With one process to read, ONE gRPC channel, opened
    here: a channel keeps its connection, so every ModelStatistics call reaches the same server
    process (under `serve --workers N`, the same worker). With several, their /metrics pages."""

    def __init__(
        self, target: str, metrics_urls: list[str], tls: TlsOptions | None = None, metadata: Metadata = ()
    ) -> None:
        self.metrics_urls = metrics_urls
        self.metadata = metadata or None
        self.channel: grpc.Channel | None = None
        if len(metrics_urls) == 1:
            self.channel = (
                grpc.insecure_channel(target)
                if tls is None
                else grpc.secure_channel(target, tls.credentials(), options=tls.channel_args())
            )
            self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)  # type: ignore[no-untyped-call]

    def read(self, timeout_s: float = 5.0) -> list[Sample]:
        """One Sample per server process read."""
        if self.channel is None:
            return [_metrics_sample(url, timeout_s) for url in self.metrics_urls]
        request = pb.ModelStatisticsRequest()
        response = self.stub.ModelStatistics(request, timeout=timeout_s, metadata=self.metadata)
        sample = sample_of(response, time.monotonic())
        read_metrics(self.metrics_urls[0], sample, timeout_s=timeout_s)
        return [sample]

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()


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


def add_metrics(sample: Sample, text: str, counts: bool = False) -> None:
    """Fold the server's Prometheus text into `sample` (unknown metrics are ignored); with `counts`,
    the requests, rows and runs too (Triton's names, the same counters ModelStatistics reads)."""
    from prometheus_client.parser import text_string_to_metric_families

    counters = {"nv_inference_request_success": sample.success, "nv_inference_count": sample.rows,
                "nv_inference_exec_count": sample.runs}  # fmt: skip
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
            elif counts and s.name in counters:
                counters[s.name][key] = int(s.value)


def read_metrics(url: str, sample: Sample, timeout_s: float = 5.0, counts: bool = False) -> None:
    try:
        # Bounded in size (an endless body had grown memory until MemoryError) and in time for the
        # whole answer (a trickling server had held top: urllib's timeout is per read).
        page = fetch_page(url, timeout_s, MAX_METRICS_PAGE_BYTES)
        add_metrics(sample, page.decode("utf-8"), counts)
    except PageTooLarge:
        sample.metrics_error = (
            f"{url}: the answer is larger than {size_limit(MAX_METRICS_PAGE_BYTES)}, the limit for "
            "a /metrics page: is --metrics-url the server's /metrics?"
        )
    except PageTooSlow as exc:
        sample.metrics_error = f"{url}: {exc}"
    except http.client.HTTPException as exc:
        # A port that answers something other than HTTP (the gRPC port) had ended top with a
        # BadStatusLine traceback; its text is the bytes it got (HTTP/2 frames): not shown.
        sample.metrics_error = f"{url}: no HTTP answer there ({type(exc).__name__}): is it the metrics port?"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        sample.metrics_error = f"{url}: {exc}"


def _metrics_sample(url: str, timeout_s: float) -> Sample:
    sample = Sample(at=0.0)
    read_metrics(url, sample, timeout_s, counts=True)
    sample.at = time.monotonic()
    sample.counts_error = sample.metrics_error
    return sample
