"""Bytes held by queued requests, bounded per model version and for the whole server.

Counting requests alone lets a few large ones (150 resnet requests of 16 images: 1.4 GB) take all
the memory; every queue therefore also charges its requests' input bytes to one budget of its own
and to one shared by every model, and refuses a request that would pass either.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from batcher.errors import QueueFull


class ByteBudget:
    """A named bound on bytes in use; `name` is the setting that sets it, for error messages."""

    def __init__(self, limit: int, name: str) -> None:
        if limit < 1:
            raise ValueError(f"{name} must be >= 1, got {limit}")
        self.limit = limit
        self.name = name
        self.used = 0

    def release(self, nbytes: int) -> None:
        self.used -= nbytes


def input_bytes(inputs: Mapping[str, np.ndarray]) -> int:
    """Bytes a request's inputs hold (for BYTES tensors, the elements' payloads too)."""
    total = 0
    for array in inputs.values():
        total += array.nbytes
        if array.dtype == object:
            total += sum(len(x) for x in array.flat if isinstance(x, (bytes, bytearray, memoryview)))
    return total


def charge(budgets: Sequence[ByteBudget], nbytes: int) -> None:
    """Take `nbytes` from every budget, or raise QueueFull naming the first that would be passed."""
    for budget in budgets:
        if budget.used + nbytes > budget.limit:
            raise QueueFull(
                f"queue is full: {nbytes} more input bytes would pass {budget.name}={budget.limit} "
                f"({budget.used} bytes queued)"
            )
    for budget in budgets:
        budget.used += nbytes
