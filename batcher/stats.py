"""Per-model counters mirroring Triton's ModelStatistics.

Not thread-safe on purpose: only the event loop updates them (the batcher and the servicer both run
there), so there are no locks on the hot path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


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

    def record_success(self, total_ns: int) -> None:
        """One request answered successfully, `total_ns` end to end (called by the server)."""
        self.success.add(total_ns)

    def record_failure(self, total_ns: int) -> None:
        """One request answered with an error, `total_ns` end to end (called by the server)."""
        self.fail.add(total_ns)

    def record_queue(self, ns: int) -> None:
        """One request left the queue for a batch after waiting `ns`."""
        self.queue.add(ns)

    def record_batch(self, rows: int, requests: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One backend run of `rows` rows serving `requests` requests.

        batch_stats counts runs; inference_stats counts requests, each charged the whole batch's
        time, as Triton does (per request, the three compute counts are equal).
        """
        per_size = self.batch_stats.get(rows)
        if per_size is None:
            per_size = self.batch_stats[rows] = BatchDurations()
        per_size.compute_input.add(input_ns)
        per_size.compute_infer.add(infer_ns)
        per_size.compute_output.add(output_ns)
        self.execution_count += 1
        self.inference_count += rows
        self.compute_input.add(input_ns * requests, requests)
        self.compute_infer.add(infer_ns * requests, requests)
        self.compute_output.add(output_ns * requests, requests)
        self.last_inference_ms = time.time_ns() // 1_000_000
