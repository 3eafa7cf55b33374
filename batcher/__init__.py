"""Deadline-aware dynamic batching. Knows nothing of gRPC or onnxruntime: see batcher/types.py."""

from batcher.dynamic import DynamicBatcher
from batcher.errors import (
    BatcherError,
    BatcherStopped,
    DeadlineExceeded,
    Overloaded,
    QueueFull,
    QueueTimedOut,
    TooManyRows,
)
from batcher.stats import BatchDurations, Duration, ModelStats
from batcher.types import Backend, BatchingPolicy, Tensors, TimeoutAction

__all__ = [
    "Backend",
    "BatchDurations",
    "BatcherError",
    "BatcherStopped",
    "BatchingPolicy",
    "DeadlineExceeded",
    "Duration",
    "DynamicBatcher",
    "ModelStats",
    "Overloaded",
    "QueueFull",
    "QueueTimedOut",
    "Tensors",
    "TimeoutAction",
    "TooManyRows",
]
