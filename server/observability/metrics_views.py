"""What /metrics shows: every metric's name, kind and meaning, read from the per-version ModelStats
(batcher/stats.py) and the batchers at scrape time. Nothing here runs per request.

Reads happen on the metrics server's thread while the event loop updates the counters: plain ints,
and small containers copied before they are iterated (a copy is one C call, atomic under the GIL).
A scrape may see one request counted in one metric and not yet in another; each metric on its own
is consistent and monotonic.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from batcher.sequence import SequenceBatcher
from batcher.stats import Histogram as Buckets
from batcher.stats import ModelStats
from server.backends.batch_padding import shape_changes
from server.backends.hosted_backend import version_host_counts
from server.models.manager import ModelManager
from server.models.versions import READY, ModelVersion
from server.observability.metrics_page import Family, HistogramPoint, series_labels

Labels = dict[str, str]
Sample = tuple[Labels, float]
Samples = Callable[[], Iterable[Sample]]


@dataclass(frozen=True, slots=True)
class View:
    """One metric: exported as an OpenTelemetry observable instrument of `kind`."""

    name: str
    kind: str  # "counter" (monotonic, exported with _total) or "gauge"
    description: str
    samples: Samples


@dataclass(frozen=True, slots=True)
class Costs:
    """Prices for sluiceway_cost_per_million_inferences (any currency), None where not set."""

    per_core_hour: float | None = None
    per_gpu_hour: float | None = None


def _whole_us(ns: int) -> int:
    """Whole microseconds, as Triton's `_us` counters are (ns * 1e-3 had carried fractions)."""
    return ns // 1000


def _labels(v: ModelVersion) -> Labels:
    return series_labels(v.name, v.version_str, v.config.metric_tags)


class MetricViews:
    """Builds every metric's samples from the server's live state; see `views` and `histograms`."""

    def __init__(
        self,
        models: ModelManager,
        open_streams: Callable[[], int],
        costs: Costs = Costs(),
        process_cpu_s: Callable[[], float] = time.process_time,
    ) -> None:
        self._models = models
        self._open_streams = open_streams
        self._costs = costs
        self._process_cpu_s = process_cpu_s
        self._cpu_start = process_cpu_s()
        self._start_ns = time.time_ns()
        # Retired versions' part of the process CPU (_cpu_each); scrapes may come on two threads.
        self._cpu_lock = threading.Lock()
        self._last_seen: dict[tuple[str, str], tuple[int, int, float]] = {}
        self._retired_answered = 0
        self._retired_runs_s = 0.0

    def mark_start(self) -> None:
        """Count process CPU from now on for cost (call once the models are loaded)."""
        self._cpu_start = self._process_cpu_s()

    def versions(self) -> list[ModelVersion]:
        """Ready model versions, safe to call from another thread (copies before iterating)."""
        out: list[ModelVersion] = []
        for entry in self._models.entries():  # a list copy
            if entry.state == READY:
                out.extend(list(entry.versions.values()))
        return out

    def _refused_early(
        self, ready: list[ModelVersion], cached: bool = False
    ) -> list[tuple[Labels, ModelStats]]:
        """The versions of lazy models not loaded that refused requests before their load
        (early_refusals.py), with those requests' statistics: shown as a loaded version that
        refused them is, zeros included (only their failure series had been), labelled by the
        config last read (its metric_tags had been missing: other series than the loaded ones).
        `cached`: only those whose config enables the response cache. A version of `ready` is
        shown as ready only: one evicted while it drained, or loaded while a refusal was judged,
        can be in both for a while, and its series had been written twice (a tester)."""
        demand = self._models.on_demand
        if demand is None:
            return []
        early = demand.refused_early
        loaded = {(v.name, v.version_str) for v in ready}
        shown = [(early.series(m), m, n, stats) for m, n, stats in early.each() if (m, str(n)) not in loaded]
        return [
            (series_labels(m, str(n), series.tags), stats)
            for series, m, n, stats in shown
            if series.cached or not cached
        ]

    def _shown(self) -> list[tuple[Labels, ModelStats]]:
        """Every version shown: ready ones, then those of `_refused_early`."""
        ready = self.versions()
        return [(_labels(v), v.stats) for v in ready] + self._refused_early(ready)

    def _each(self, value: Callable[[ModelVersion], float]) -> Samples:
        """A figure of each ready version's batcher now; 0 for `_refused_early` (nothing queued)."""

        def samples() -> Iterator[Sample]:
            ready = self.versions()
            yield from ((_labels(v), value(v)) for v in ready)
            yield from ((labels, 0) for labels, _ in self._refused_early(ready))

        return samples

    def _stat(self, value: Callable[[ModelStats], float]) -> Samples:
        """A figure of each shown version's statistics."""
        return lambda: ((labels, value(stats)) for labels, stats in self._shown())

    def _per_reason(self, field: Callable[[ModelStats], dict[str, int]], label: str) -> Samples:
        def samples() -> Iterator[Sample]:
            for labels, stats in self._shown():
                for reason, count in dict(field(stats)).items():
                    yield {**labels, label: reason}, count

        return samples

    def _cached(self, value: Callable[[ModelStats], float]) -> Samples:
        """Only for versions whose config enables the response cache (as Triton)."""

        def samples() -> Iterator[Sample]:
            ready = self.versions()
            yield from ((_labels(v), value(v.stats)) for v in ready if v.config.response_cache.enable)
            yield from ((labels, value(stats)) for labels, stats in self._refused_early(ready, cached=True))

        return samples

    def views(self) -> list[View]:
        """Every counter and gauge. Triton's names are gauges: OpenTelemetry's Prometheus mapping
        appends `_total` to every monotonic sum, which would rename them (README "Metrics")."""
        each, stat, per_reason, cached = self._each, self._stat, self._per_reason, self._cached
        us = _whole_us
        return [
            View("nv_inference_request_success", "gauge", "Successful requests (cumulative, Triton's name)",
                 stat(lambda s: s.success.count)),
            View("nv_inference_request_failure", "gauge", "Failed requests by Triton's reason (cumulative)",
                 per_reason(lambda s: s.failures, "reason")),
            View("nv_inference_count", "gauge", "Inferences (batch rows) computed (cumulative)",
                 stat(lambda s: s.inference_count)),
            View("nv_inference_exec_count", "gauge", "Backend runs (batches) (cumulative)",
                 stat(lambda s: s.execution_count)),
            View("nv_inference_request_duration_us", "gauge", "End-to-end time of successful requests, us "
                 "(cumulative)", stat(lambda s: us(s.success.ns))),
            View("nv_inference_queue_duration_us", "gauge", "Time requests waited in the queue, us "
                 "(cumulative)", stat(lambda s: us(s.queue.ns))),
            View("nv_inference_compute_input_duration_us", "gauge", "Input gathering time per request, us "
                 "(cumulative; each request charged its whole batch's)",
                 stat(lambda s: us(s.compute_input.ns))),
            View("nv_inference_compute_infer_duration_us", "gauge", "Model run time per request, us "
                 "(cumulative; each request charged its whole batch's)",
                 stat(lambda s: us(s.compute_infer.ns))),
            View("nv_inference_compute_output_duration_us", "gauge", "Output scatter time per request, us "
                 "(cumulative; each request charged its whole batch's)",
                 stat(lambda s: us(s.compute_output.ns))),
            View("nv_inference_pending_request_count", "gauge", "Requests waiting in the queue now",
                 each(lambda v: v.batcher.queued_requests)),
            View("nv_cache_num_hits_per_model", "gauge", "Response cache hits (cumulative)",
                 cached(lambda s: s.cache_hit.count)),
            View("nv_cache_num_misses_per_model", "gauge", "Response cache misses (cumulative)",
                 cached(lambda s: s.cache_miss.count)),
            View("nv_cache_hit_duration_per_model", "gauge", "Time of cache hits (lookup and answer), us "
                 "(cumulative)", cached(lambda s: us(s.cache_hit.ns))),
            View("nv_cache_miss_duration_per_model", "gauge", "Time of cache misses (lookup and insert), us "
                 "(cumulative)", cached(lambda s: us(s.cache_miss.ns))),
            View("sluiceway_deadline_outcome_total", "counter", "Requests by deadline outcome: shed at "
                 "admission, expired in the queue, ran late, on time", self._outcomes),
            View("sluiceway_frames_dropped_total", "counter", "Stream frames superseded by a newer "
                 "frame before they were computed (latest_frame_wins)", stat(lambda s: s.dropped)),
            View("sluiceway_stream_answers_dropped_total", "counter", "Stream answers counted a success, "
                 "a failure or a dropped frame whose call ended before they were written, by why it ended "
                 "(frame_dropped: a superseded frame's answer)",
                 per_reason(lambda s: s.unsent, "reason")),
            View("sluiceway_goodput_total", "counter", "Requests answered OK within their deadline "
                 "(or without one)", stat(lambda s: s.success.count)),
            View("sluiceway_batch_dispatch_total", "counter", "Batches dispatched, by why they were cut",
                 per_reason(lambda s: s.dispatch, "reason")),
            View("sluiceway_rejection_total", "counter", "Requests refused, by reason",
                 per_reason(lambda s: s.rejections, "reason")),
            View("sluiceway_rollbacks_total", "counter", "Versions taken out of traffic (trigger: auto "
                 "or manual; server/models/rollout.py)", self._models.rollout.rollback_counts),
            View("sluiceway_run_cpu_seconds_total", "counter", "Measured CPU seconds of backend runs",
                 stat(lambda s: s.run_cpu_s)),
            View("sluiceway_queue_requests", "gauge", "Requests waiting in the queue now",
                 each(lambda v: v.batcher.queued_requests)),
            View("sluiceway_queue_bytes", "gauge", "Input bytes of the requests waiting in the queue now",
                 each(lambda v: v.batcher.queued_bytes)),
            View("sluiceway_batches_in_flight", "gauge", "Batches taken from the queue and not yet answered",
                 each(lambda v: v.batcher.in_flight_batches)),
            View("sluiceway_sequences_live", "gauge", "Sequences started and not yet ended, released or "
                 "timed out (sequence batching versions)", self._sequences(lambda q: q.live)),
            View("sluiceway_sequence_state_bytes", "gauge", "Bytes of implicit state the live sequences "
                 "hold (sequence batching versions)", self._sequences(lambda q: q.state_bytes)),
            View("sluiceway_model_instances", "gauge", "Backend instances by the device each runs on "
                 "(cpu, cuda:0), as they started", self._instances),
            View("sluiceway_padded_shape_changes_total", "counter", "Times a CUDA instance's padded "
                 "batch size changed, each a cuDNN plan build per convolution (versions that pad only)",
                 self._shape_changes),
            View("sluiceway_shared_session_runs_total", "counter", "Runs of the version's sessions in the "
                 "session host (--shared-sessions), every worker's batches; each worker shows the same",
                 lambda: self._shared("runs")),
            View("sluiceway_shared_session_rows_total", "counter", "Rows those runs held (over runs: the "
                 "batch the GPU ran)", lambda: self._shared("rows")),
            View("sluiceway_shared_session_unrun_total", "counter", "Batches the session host left unrun, "
                 "their turn past every request's deadline", lambda: self._shared("expired")),
            View("sluiceway_streams_open", "gauge", "Open ModelStreamInfer calls (server-wide)",
                 lambda: [({}, self._open_streams())]),
            View("sluiceway_cpu_seconds_per_inference", "gauge", "Process CPU seconds per inference: "
                 "measured run CPU plus a share of the rest of the process CPU", self._cpu_per_inference),
            View("sluiceway_cost_per_million_inferences", "gauge", "Cost of a million inferences at "
                 "cost_per_core_hour (and cost_per_gpu_hour)", self._cost_per_million),
        ]  # fmt: skip

    def _sequences(self, value: Callable[[SequenceBatcher], float]) -> Samples:
        """A figure of each ready version's live sequences (versions with sequence batching only)."""

        def samples() -> Iterator[Sample]:
            for v in self.versions():
                if v.sequences is not None:
                    yield _labels(v), value(v.sequences)

        return samples

    def _instances(self) -> Iterator[Sample]:
        for v in self.versions():
            counts: dict[str, int] = {}
            for device in v.devices:
                counts[device] = counts.get(device, 0) + 1
            for device, count in counts.items():
                yield {**_labels(v), "device": device}, count

    def _shared(self, field: str) -> Iterator[Sample]:
        for v in self.versions():
            counts = version_host_counts(v.backends)
            if counts is not None:
                yield _labels(v), getattr(counts, field)

    def _shape_changes(self) -> Iterator[Sample]:
        for v in self.versions():
            hosted = version_host_counts(v.backends)
            if hosted is not None:  # the session host's, which every worker reads alike
                yield _labels(v), hosted.shape_changes
                continue
            # Each count once: a version's instances share theirs (a replaced instance's goes on).
            counts = {id(c): c for c in map(shape_changes, v.backends) if c is not None}
            if counts:
                yield _labels(v), sum(c.count for c in counts.values())

    def _outcomes(self) -> Iterator[Sample]:
        for labels, s in self._shown():
            counts = {"shed": s.shed, "expired": s.expired, "late": s.late, "on_time": s.success.count}
            for outcome, count in counts.items():
                yield {**labels, "outcome": outcome}, count

    def _cpu_each(self) -> list[tuple[ModelVersion, float]]:
        """CPU seconds per inference of each version that has answered any: its runs' CPU
        (measured per run) plus a share, by requests answered, of the process CPU outside runs
        since `mark_start` (the gRPC path, decode and encode, the batcher, idle threads), over its
        inferences (rows computed, and cache hits: a cached model was charged 300 requests' share
        for its 2 computed rows). Versions retired since (a reload, an unload) keep their part:
        all the CPU since start-up had gone to a reloaded version's first requests (x200)."""
        current = self.versions()
        with self._cpu_lock:
            self._note_retired(current)
            runs = sum(v.stats.run_cpu_s for v in current) + self._retired_runs_s
            answered = sum(_answered(v) for v in current) + self._retired_answered
        rest = max(0.0, self._process_cpu_s() - self._cpu_start - runs)
        out: list[tuple[ModelVersion, float]] = []
        for v in current:
            inferences = _inferences(v)
            if inferences:
                out.append((v, (v.stats.run_cpu_s + rest * _answered(v) / (answered or 1)) / inferences))
        return out

    def _note_retired(self, current: list[ModelVersion]) -> None:
        """Move the last figures of versions no longer served into the retired totals."""
        seen: dict[tuple[str, str], tuple[int, int, float]] = {}
        for v in current:
            key = (v.name, v.version_str)
            seen[key] = (id(v), _answered(v), v.stats.run_cpu_s)
            last = self._last_seen.get(key)
            if last is not None and (last[0] != id(v) or last[1] > seen[key][1]):  # replaced
                self._retired_answered += last[1]
                self._retired_runs_s += last[2]
        for key, last in self._last_seen.items():
            if key not in seen:  # unloaded
                self._retired_answered += last[1]
                self._retired_runs_s += last[2]
        self._last_seen = seen

    def _cpu_per_inference(self) -> list[Sample]:
        return [(_labels(v), cpu_s) for v, cpu_s in self._cpu_each()]

    def _cost_per_million(self) -> list[Sample]:
        core, gpu = self._costs.per_core_hour, self._costs.per_gpu_hour
        if core is None and gpu is None:
            return []
        out: list[Sample] = []
        for v, cpu_s in self._cpu_each():
            cost = cpu_s * (core or 0.0) / 3600
            if gpu is not None:  # GPU time: the runs' wall time, each run holding the device
                cost += _run_seconds(v.stats) / _inferences(v) * gpu / 3600
            out.append((_labels(v), cost * 1e6))
        return out

    def histograms(self) -> list[Family]:
        """The latency, batch-size and slack histograms, from the fixed buckets counted on the hot
        path (their counts copied: the event loop goes on counting while the page is written)."""
        shown = self._shown()

        def points(pick: Callable[[ModelStats], Buckets], scale: int) -> Iterator[HistogramPoint]:
            bounds: tuple[int, ...] = ()
            for labels, stats in shown:
                h = pick(stats)
                if len(bounds) != len(h.bounds):  # one bounds tuple for the family's points
                    bounds = tuple(b // scale for b in h.bounds)
                yield HistogramPoint(labels, bounds, list(h.counts), h.total / scale)

        def family(name: str, description: str, pick: Callable[[ModelStats], Buckets], scale: int) -> Family:
            return Family(name, "histogram", description, points(pick, scale))  # read as it is written

        return [
            family("sluiceway_request_duration_us", "End-to-end time of successful requests, us",
                   lambda s: s.request_hist, 1000),
            family("sluiceway_queue_duration_us", "Time each request waited in the queue, us",
                   lambda s: s.queue_hist, 1000),
            family("sluiceway_compute_infer_duration_us", "Model run time per backend run, us",
                   lambda s: s.infer_hist, 1000),
            family("sluiceway_slack_at_dispatch_us", "Time left before the deadline when a request "
                   "with one was dispatched, us", lambda s: s.slack_hist, 1000),
            family("sluiceway_batch_size", "Rows per backend run", lambda s: s.batch_hist, 1),
        ]  # fmt: skip


def _answered(v: ModelVersion) -> int:
    return v.stats.success.count + v.stats.fail.count


def _inferences(v: ModelVersion) -> int:
    """Rows computed, and cache hits (each answered its request's rows without a run: counted as
    one, exact for requests of one row)."""
    return v.stats.inference_count + v.stats.cache_hit.count


def _run_seconds(stats: ModelStats) -> float:
    """Wall seconds of backend runs (the time a GPU was held, on a GPU provider)."""
    return sum(b.compute_infer.ns for b in dict(stats.batch_stats).values()) / 1e9
