"""The batcher's vocabulary: tensors, the backend it drives, and the policy it follows."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.generic]
Tensors = Mapping[str, Array]


class Backend(Protocol):
    """One model instance. `run` takes and returns tensors whose first dimension is the batch."""

    async def run(self, inputs: Tensors) -> Tensors: ...


class RunsNow(Protocol):
    """Optional, for backends whose small runs cost less than a trip through the queue.

    `run_now` runs synchronously and returns outputs when this input is cheap enough to run on
    the caller's thread, else None without running. The batcher uses it only when the model is
    idle (nothing queued, nothing running): no batch could be formed with anyone anyway.
    """

    def run_now(self, inputs: Tensors) -> Tensors | None: ...


class TimeoutAction(enum.Enum):
    REJECT = "reject"  # a request past its queue-policy timeout is answered DEADLINE_EXCEEDED
    DELAY = "delay"  # ... is moved behind every request still in time, and computed later


@dataclass(frozen=True, slots=True)
class BatchingPolicy:
    """How one model's requests are queued and batched (from its ModelConfig.dynamic_batching)."""

    # Most rows in one batch; 0 means the model has no batch dimension: one request per run.
    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...] = ()
    # How long a batch may wait to grow, once the backend is free; never past a request's slack.
    max_queue_delay_s: float = 0.0
    # Most requests waiting; beyond it, submit raises QueueFull at once.
    max_queue_size: int = 1024
    # Priority 1 is the highest; 0 on a request means default_priority.
    priority_levels: int = 1
    default_priority: int = 1
    # Queue-policy timeout applied to every request (None: only the caller's deadline counts).
    default_timeout_s: float | None = None
    timeout_action: TimeoutAction = TimeoutAction.REJECT
    # Batches one backend instance may run at once (1-2): bounded work in flight.
    max_batches_in_flight: int = 1
