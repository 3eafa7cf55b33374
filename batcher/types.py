"""The batcher's vocabulary: tensors, the backend it drives, and the policy it follows."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # batcher/ragged.py imports this module
    from batcher.ragged import RaggedPlan

Array = npt.NDArray[np.generic]
Tensors = Mapping[str, Array]
# Checks a request's own outputs once computed, before they are counted as its answer; raises why
# they cannot be its answer (the caller's: an output region too small, an answer over its message
# limit). Checked after the count, such a request was in `fail` and also in queue, compute and
# inference_count.
Accept = Callable[[Tensors], None]
# Told the compute times (gather, run, scatter ns) of the run that answered a request with its
# outputs: an ensemble's request sums its steps' so, as Triton's ensembles report theirs.
Computed = Callable[[tuple[int, int, int]], None]


class Backend(Protocol):
    """One model instance. `run` takes and returns tensors whose first dimension is the batch."""

    async def run(self, inputs: Tensors) -> Tensors: ...


class RunsBlocking(Protocol):
    """Optional, for backends whose run is one blocking call (onnxruntime's session.run).

    The batcher then decides where it runs, from its estimator (batcher/estimate.py): on the
    caller's thread when recent runs of that size took less CPU than a thread hop costs (tiny
    models), else in `executor`, where it measures each run's CPU time on that thread.
    """

    @property
    def executor(self) -> Executor: ...

    def run_blocking(self, inputs: Tensors) -> Tensors: ...


class RunsBlockingBefore(Protocol):
    """Optional, for a RunsBlocking backend that queues a batch it has taken (the session host,
    server/backends/session_host.py, runs several processes' batches in turn): it is handed the
    batch's start-by time on time.monotonic's clock (None: no deadline) and leaves the batch unrun,
    raising ExpiredUnrun (batcher/watchdog.py), when its turn comes after it; it calls `started`
    (when given) as the run starts, so the watchdog times the run and not the wait."""

    def run_blocking_before(
        self, inputs: Tensors, start_by: float | None, started: Callable[[], None] | None = None
    ) -> Tensors: ...


class TimeoutAction(enum.Enum):
    REJECT = "reject"  # a request past its queue-policy timeout is answered DEADLINE_EXCEEDED
    DELAY = "delay"  # ... is moved behind its level's requests still in time, and computed later


@dataclass(frozen=True, slots=True)
class LevelQueuePolicy:
    """One priority level's own queue policy (Triton's priority_queue_policy entry); the level's
    requests then follow it instead of BatchingPolicy's default queue fields."""

    max_queue_size: int  # requests of this level waiting; beyond it QueueFull
    default_timeout_s: float | None = None
    timeout_action: TimeoutAction = TimeoutAction.REJECT
    allow_timeout_override: bool = True


@dataclass(frozen=True, slots=True)
class BatchingPolicy:
    """How one model's requests are queued and batched (from its ModelConfig.dynamic_batching)."""

    # Most rows in one batch; 0 means the model has no batch dimension: one request per run.
    max_batch_size: int
    # With max_batch_size 0: the model has a batch dimension but no dynamic batching (each request
    # runs alone); its statistics then count each run's rows from the inputs' first dimension.
    alone_with_rows: bool = False
    preferred_batch_sizes: tuple[int, ...] = ()
    # How long a batch may wait to grow, once the backend is free; never past a request's slack.
    max_queue_delay_s: float = 0.0
    # When set, an instance that is free takes what is queued now instead of waiting for
    # max_queue_delay (form_batch is only called when an instance has a free slot).
    idle_dispatch: bool = False
    # Most requests waiting; beyond it, submit raises QueueFull at once.
    max_queue_size: int = 1024
    # Priority 1 is the highest; 0 on a request means default_priority.
    priority_levels: int = 1
    default_priority: int = 1
    # Queue-policy timeout applied to every request (None: only the caller's deadline counts).
    default_timeout_s: float | None = None
    timeout_action: TimeoutAction = TimeoutAction.REJECT
    # Whether a request's own `timeout` counts (Triton's allow_timeout_override); when False it is
    # ignored and only the gRPC deadline and default_timeout_s bound the request.
    allow_timeout_override: bool = True
    # Batches one backend instance may run at once (1-2): bounded work in flight.
    max_batches_in_flight: int = 1
    # Levels with a queue policy of their own, as (level, policy) pairs; other levels follow the
    # default queue fields above, and share max_queue_size among them.
    level_policies: tuple[tuple[int, LevelQueuePolicy], ...] = ()
    # Ragged inputs and batch inputs (batcher/ragged.py); None: every input batches on axis 0.
    ragged: RaggedPlan | None = None

    def level_policy(self, level: int) -> LevelQueuePolicy | None:
        """The queue policy of priority `level` when it has its own, else None."""
        for lvl, policy in self.level_policies:
            if lvl == level:
                return policy
        return None


@dataclass(slots=True, eq=False)
class BatchRun:
    """One batch run as an observer (the server's tracing) sees it: perf_counter_ns timestamps of
    gather, run and scatter, and the traced requests in it. Made only when one of them is traced."""

    rows: int
    requests: int
    gather_ns: int  # the batch's inputs began to be gathered: its requests left the queue before
    run_ns: int
    scatter_ns: int
    end_ns: int
    traced: list[QueueTrace]
    note: object = None  # the observer's own, once per run (the tracing's batch span)


@dataclass(slots=True, eq=False)
class QueueTrace:
    """Optional, per queued request (`enqueue(..., trace=)`): the batcher records the run that
    computed it. `context` is the observer's own (the request's span, for the run's links)."""

    context: object = None
    run: BatchRun | None = None
    # perf_counter_ns when its batch's run began (its wait in the queue ended), noted before the
    # run: a run that fails, or a caller cut off during it, has no BatchRun but still ended its wait.
    taken_ns: int = 0
