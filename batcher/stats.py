"""Per-model counters mirroring Triton's ModelStatistics, plus what /metrics adds to them.

Not thread-safe on purpose: only the event loop updates them (the batcher and the servicer both run
there), so there are no locks on the hot path. The metrics exporter reads them from its own thread
at scrape time (server/observability/metrics.py): plain ints and copies of small containers.
Histograms are fixed buckets: a bisect into a tuple of bounds and one int increment per value.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from dataclasses import dataclass, field

from batcher.errors import DeadlineExceeded, Overloaded, QueueFull

# Bucket upper bounds (inclusive, as Prometheus' `le`) in nanoseconds: 50 us to 1 s, dense around
# the sub-millisecond runs of small models and the ~100 ms of large ones and of deadlines.
LATENCY_BOUNDS_NS: tuple[int, ...] = tuple(
    us * 1000
    for us in (50, 100, 200, 300, 500, 750, 1_000, 2_000, 3_000, 5_000, 7_500, 10_000, 20_000, 30_000,
               50_000, 75_000, 100_000, 150_000, 200_000, 300_000, 500_000, 1_000_000)
)  # fmt: skip
BATCH_SIZE_BOUNDS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

# Why a batch was dispatched (see batcher/form.py, DispatchReason), and why a request was refused
# at admission. Deadline outcomes: shed at admission, expired in the queue, ran but ended late.
DISPATCH_REASONS = ("full", "preferred", "delay_expired", "idle", "deadline", "drain")
REJECTION_REASONS = ("queue_full", "queued_bytes", "overloaded", "deadline", "invalid", "unavailable")
# Triton's `reason` label of nv_inference_request_failure.
FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")
# Why a stream's call ended with answers made (counted a success or a failure) and never written:
# cancelled by its client or by grpc (a frame over its hard ceiling), its deadline, its client
# read nothing (stalled), the server stopped, its request stream failed, or an earlier answer's
# error ended it (`grpc_error_ended`: Triton's triton_grpc_error header; that error itself is
# delivered, as the call's status). And `frame_dropped`:
# a latest-frame-wins frame's `frame_dropped` answer (counted in `dropped`, neither a success nor a
# failure) never written, whatever ended its call; so every answer made and unsent counts once.
UNSENT_REASONS = (
    "cancelled",
    "deadline",
    "stalled",
    "shutdown",
    "error",
    "grpc_error_ended",
    "frame_dropped",
)


@dataclass(slots=True)
class Histogram:
    """Counts of values per bucket; `counts[i]` holds values <= bounds[i] (and > bounds[i - 1]),
    the last one those above every bound. `total` is the sum of the values."""

    bounds: tuple[int, ...]
    counts: list[int] = field(init=False)
    total: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: int) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)


def _latency() -> Histogram:
    return Histogram(LATENCY_BOUNDS_NS)


def _reasons(names: tuple[str, ...]) -> dict[str, int]:
    return dict.fromkeys(names, 0)


@dataclass(slots=True)
class Duration:
    """A count and the total nanoseconds of the events counted (Triton's StatisticDuration)."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass(slots=True)
class BatchDurations:
    """Compute times of every backend run of one batch size (Triton's InferBatchStatistics)."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class ModelStats:
    """Counters for one model version; the servicer turns them into a ModelStatistics message."""

    inference_count: int = 0  # rows successfully computed
    execution_count: int = 0  # backend runs
    last_inference_ms: int = 0  # wall clock, ms since the epoch: for display only
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    cache_hit: Duration = field(default_factory=Duration)
    cache_miss: Duration = field(default_factory=Duration)
    batch_stats: dict[int, BatchDurations] = field(default_factory=dict)
    # -- for /metrics only (not in ModelStatistics)
    request_hist: Histogram = field(default_factory=_latency)  # successful requests, end to end
    queue_hist: Histogram = field(default_factory=_latency)
    infer_hist: Histogram = field(default_factory=_latency)  # per backend run
    batch_hist: Histogram = field(default_factory=lambda: Histogram(BATCH_SIZE_BOUNDS))  # rows per run
    slack_hist: Histogram = field(default_factory=_latency)  # per request with a deadline, at dispatch
    shed: int = 0  # refused at admission: its deadline could not be met (DeadlineExceeded, Overloaded)
    # Refused at admission for its deadline alone (DeadlineExceeded: past, or shorter than the run):
    # the time it had left. The rollout tells a client's impossible deadline from a slow version by it.
    deadline_left_hist: Histogram = field(default_factory=_latency)
    expired: int = 0  # its deadline passed while it waited in the queue: never computed
    late: int = 0  # computed, but the run ended after its deadline (answered DEADLINE_EXCEEDED)
    dropped: int = 0  # latest-frame-wins: superseded by a newer frame of its stream, never computed
    # Answers counted in success, fail or dropped whose stream's call ended before they were written.
    unsent: dict[str, int] = field(default_factory=lambda: _reasons(UNSENT_REASONS))
    dispatch: dict[str, int] = field(default_factory=lambda: _reasons(DISPATCH_REASONS))
    rejections: dict[str, int] = field(default_factory=lambda: _reasons(REJECTION_REASONS))
    failures: dict[str, int] = field(default_factory=lambda: _reasons(FAILURE_REASONS))
    run_cpu_s: float = 0.0  # CPU seconds of backend runs, measured where the backend runs blocking

    def record_success(self, total_ns: int) -> None:
        """One request answered successfully, `total_ns` end to end (called by the server)."""
        self.success.add(total_ns)
        self.request_hist.observe(total_ns)

    def record_failure(self, total_ns: int, reason: str = "OTHER") -> None:
        """One request answered with an error, `total_ns` end to end (called by the server);
        `reason` is Triton's failure reason (FAILURE_REASONS)."""
        self.fail.add(total_ns)
        self.failures[reason] += 1

    def record_canceled(self) -> None:
        """The caller went away before its answer: not a failure in ModelStatistics (as before)."""
        self.failures["CANCELED"] += 1

    def record_unsent(self, reason: str) -> None:
        """An answer counted in success or fail was never written: its stream's call ended first
        (UNSENT_REASONS). Added, never taken back: success and fail only ever grow."""
        self.unsent[reason] += 1

    def record_rejection(self, reason: str, shed: bool = False) -> None:
        """A request refused before it was queued (REJECTION_REASONS); `shed` when for its deadline."""
        self.rejections[reason] += 1
        self.shed += shed

    def record_refusal(self, exc: Exception, queue_full: bool, left_ns: int = 0) -> None:
        """The batcher refused a request at admission with `exc`; `queue_full`: its queue then
        held max_queue_size requests (else a QueueFull is for the queued-bytes budgets);
        `left_ns`: the time its deadline left it then (none left: 0)."""
        if isinstance(exc, Overloaded):
            self.record_rejection("overloaded", shed=True)
        elif isinstance(exc, QueueFull):
            self.record_rejection("queue_full" if queue_full else "queued_bytes")
        elif isinstance(exc, DeadlineExceeded):
            self.record_rejection("deadline", shed=True)
            self.deadline_left_hist.observe(max(0, left_ns))

    def record_queue(self, ns: int, slack_ns: int | None = None) -> None:
        """One request waited `ns` in the queue and was answered: `observe_queue` and `count_queue`."""
        self.observe_queue(ns, slack_ns)
        self.count_queue(ns)

    def observe_queue(self, ns: int, slack_ns: int | None = None) -> None:
        """One request left the queue for a batch after waiting `ns` (the /metrics histograms);
        `slack_ns`: the time then left before its deadline (None: it has none)."""
        self.queue_hist.observe(ns)
        if slack_ns is not None:
            self.slack_hist.observe(slack_ns)

    def count_queue(self, ns: int) -> None:
        """ModelStatistics' queue, once a request's run has answered it: Triton counts queue for
        successful requests only. Added at dispatch and taken back after a failed run, the series
        went down between two scrapes, which rate() reads as a counter reset."""
        self.queue.add(ns)

    def record_computed(self, rows: int, compute_ns: tuple[int, int, int], requests: int = 1) -> None:
        """`requests` requests of a run answered with their outputs: their `rows` in
        inference_count and, each, their batch's compute times (`compute_ns`: gather, run,
        scatter), as Triton counts successes. Added only once they are answered, never added for
        the whole run and then taken back: the metrics thread reads these between any two
        bytecodes, and a series that went down between two scrapes reads as a counter reset to
        Prometheus's rate()."""
        self.inference_count += rows
        self.compute_input.add(compute_ns[0] * requests, requests)
        self.compute_infer.add(compute_ns[1] * requests, requests)
        self.compute_output.add(compute_ns[2] * requests, requests)

    def count_copy(self, rows: int) -> None:
        """A computed request that is not the model's own (a shadow copy: `Admission.counted`
        False): its rows in inference_count, as computed, and nowhere else."""
        self.inference_count += rows

    def record_cache_hit(self, ns: int) -> None:
        """A request answered from the response cache: Triton counts it in queue too (no wait)."""
        self.cache_hit.add(ns)
        self.queue.add(0)

    def record_dispatch(self, reason: str) -> None:
        """A batch was dispatched, for `reason` (DISPATCH_REASONS)."""
        self.dispatch[reason] += 1

    def record_batch(self, rows: int, requests: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One backend run of `rows` rows serving `requests` requests, every one answered.

        batch_stats counts runs; inference_stats counts requests, each charged the whole batch's
        time, as Triton does (per request, the three compute counts are equal).
        """
        self.record_run(rows, input_ns, infer_ns, output_ns)
        self.inference_count += rows
        self.compute_input.add(input_ns * requests, requests)
        self.compute_infer.add(infer_ns * requests, requests)
        self.compute_output.add(output_ns * requests, requests)

    def record_run(self, rows: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One backend run of `rows` rows that completed: execution_count and batch_stats (Triton
        counts every run there); its requests count by `record_computed` as each is answered."""
        per_size = self.batch_stats.get(rows)
        if per_size is None:
            per_size = self.batch_stats[rows] = BatchDurations()
        per_size.compute_input.add(input_ns)
        per_size.compute_infer.add(infer_ns)
        per_size.compute_output.add(output_ns)
        self.execution_count += 1
        self.last_inference_ms = time.time_ns() // 1_000_000
        self.infer_hist.observe(infer_ns)
        self.batch_hist.observe(rows)
