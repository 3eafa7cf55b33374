"""Shadow traffic: a copy of an answered request runs on a candidate version; its outputs are
compared with the answer the caller got (max abs diff, argmax agreement, latency) and recorded,
never returned.

The stable path never waits for a shadow: the copy is offered after the caller's answer exists,
as a task of its own; it is not submitted at all (counted `dropped`) while the candidate's queue is
longer than `max_queue` or `max_in_flight` copies are pending, and it goes in at the candidate's
lowest priority with a tight deadline, so its batcher sheds it first (counted `shed`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from batcher.admission import Admission
from batcher.errors import BatcherError, BatcherStopped, DeadlineExceeded, QueueFull
from batcher.stats import LATENCY_BOUNDS_NS, Histogram
from batcher.types import Tensors
from server.models.traffic import ShadowPolicy

if TYPE_CHECKING:
    from server.models.versions import ModelVersion

log = logging.getLogger(__name__)


def _latency() -> Histogram:
    return Histogram(LATENCY_BOUNDS_NS)


@dataclass(slots=True)
class ShadowFigures:
    """Cumulative, per model (since its traffic policy was read)."""

    mirrored: int = 0  # copies submitted to the candidate
    compared: int = 0  # copies answered and compared
    errors: int = 0  # copies the candidate failed (its backend, a run timeout)
    shed: int = 0  # copies its batcher refused or dropped for their deadline or a full queue
    dropped: int = 0  # copies not submitted: the candidate's queue was long, or too many pending
    max_abs_diff: float = 0.0  # over every compared numeric output (inf: shapes differed)
    argmax_rows: int = 0  # rows whose argmax (first numeric output, last axis) was compared
    argmax_agree: int = 0
    shadow_latency: Histogram = field(default_factory=_latency)  # the copy: submit to outputs
    stable_latency: Histogram = field(default_factory=_latency)  # the caller's request, end to end


class ShadowRunner:
    """Offers copies of answered requests to one candidate version, bounded in number."""

    def __init__(self, policy: ShadowPolicy, figures: ShadowFigures) -> None:
        self.policy = policy
        self.figures = figures
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def offer(
        self, candidate: ModelVersion, inputs: Tensors, rows: int, answer: Tensors, answer_ns: int
    ) -> None:
        """Mirror one answered request (`answer`: the outputs the caller got, `answer_ns` its time)."""
        policy, figures, batcher = self.policy, self.figures, candidate.batcher
        if len(self._pending) >= policy.max_in_flight or batcher.queued_requests > policy.max_queue:
            figures.dropped += 1
            return
        try:
            admission = batcher.admission(
                rows,
                deadline=time.monotonic() + policy.timeout_s,
                priority=batcher.policy.priority_levels,  # the lowest level: shed first
            )._replace(counted=False)  # not a request of the candidate's (README "Rollout")
        except (BatcherError, ValueError):
            figures.dropped += 1  # e.g. more rows than the candidate takes
            return
        figures.mirrored += 1
        task = asyncio.get_running_loop().create_task(
            self._run(candidate, inputs, admission, answer, answer_ns)
        )
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _run(
        self, candidate: ModelVersion, inputs: Tensors, admission: Admission, answer: Tensors, answer_ns: int
    ) -> None:
        figures, batcher = self.figures, candidate.batcher
        start = time.perf_counter_ns()
        try:
            outputs = batcher.run_now(inputs, admission)
            if outputs is None:
                outputs = await batcher.enqueue(inputs, admission)
        except BatcherError as exc:
            # Refused or expired for its deadline or a full queue, or retired by a reload: shed,
            # as designed. A run timeout counts as the candidate's error.
            if isinstance(exc, (DeadlineExceeded, QueueFull, BatcherStopped)):
                figures.shed += 1
            else:
                figures.errors += 1
            return
        except asyncio.CancelledError:
            raise
        except Exception:  # the candidate's backend failed: its error, never the caller's
            figures.errors += 1
            log.debug("shadow request on %s failed", candidate.batcher, exc_info=True)
            return
        figures.shadow_latency.observe(time.perf_counter_ns() - start)
        figures.stable_latency.observe(answer_ns)
        figures.compared += 1
        compare(answer, outputs, figures)

    def cancel(self) -> None:
        """Stop every pending copy (the policy changed or the model was reloaded)."""
        for task in list(self._pending):
            task.cancel()


def compare(stable: Tensors, shadow: Tensors, figures: ShadowFigures) -> None:
    """Record how far `shadow`'s outputs are from `stable`'s (outputs both have)."""
    argmax_done = False
    for name in sorted(stable.keys() & shadow.keys()):
        a, b = np.asarray(stable[name]), np.asarray(shadow[name])
        if a.dtype.kind not in "biuf" or b.dtype.kind not in "biuf":
            if not np.array_equal(a, b):
                figures.max_abs_diff = math.inf  # BYTES outputs: equal or not
            continue
        if a.shape != b.shape:
            figures.max_abs_diff = math.inf
            continue
        if a.size:
            diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
            figures.max_abs_diff = max(figures.max_abs_diff, diff)
        if not argmax_done and a.ndim >= 1 and a.shape[-1] > 1 and a.size:
            rows_a = a.reshape(-1, a.shape[-1]).argmax(axis=1)
            rows_b = b.reshape(-1, b.shape[-1]).argmax(axis=1)
            figures.argmax_rows += int(rows_a.size)
            figures.argmax_agree += int(np.count_nonzero(rows_a == rows_b))
            argmax_done = True
