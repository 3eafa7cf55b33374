"""A model instance whose graph has tensors batched along an axis other than 0.

The batcher gathers and scatters along axis 0. Some graphs keep a tensor's batch elsewhere
(Silero VAD's recurrent state is f32[2, B, 128]): this wrapper moves the batch axis of those
tensors into place before a run and back to the front after it, so the batcher (and a sequence's
stored state) always sees batch-first tensors. Which tensors and axes: the model's
`sequence_state_batch_axis` parameter (server/models/sequence_config.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Executor
from typing import Protocol

import numpy as np

from batcher.types import Array, Tensors


class Instance(Protocol):
    async def run(self, inputs: Tensors) -> Tensors: ...

    def close(self) -> None: ...

    def abandon(self) -> None: ...


def to_model(tensors: Tensors, axes: Mapping[str, int]) -> dict[str, Array]:
    """Batch-first tensors as the graph takes them (contiguous, as onnxruntime wants)."""
    out = dict(tensors)
    for name, axis in axes.items():
        if name in out:
            out[name] = np.ascontiguousarray(np.moveaxis(out[name], 0, axis))
    return out


def from_model(tensors: Tensors, axes: Mapping[str, int]) -> dict[str, Array]:
    """The graph's outputs with every batch axis first (views; scatter slices them)."""
    out = dict(tensors)
    for name, axis in axes.items():
        if name in out:
            out[name] = np.moveaxis(out[name], axis, 0)
    return out


class BatchAxes:
    """Wraps an instance that is not RunsBlocking (the batcher then awaits `run`)."""

    def __init__(self, inner: Instance, axes: Mapping[str, int]) -> None:
        self._inner = inner
        self._axes = dict(axes)

    async def run(self, inputs: Tensors) -> Tensors:
        return from_model(await self._inner.run(to_model(inputs, self._axes)), self._axes)

    def close(self) -> None:
        self._inner.close()

    def abandon(self) -> None:
        self._inner.abandon()


class BlockingBatchAxes(BatchAxes):
    """Wraps a RunsBlocking instance (onnxruntime's): the batcher may run it inline or in `executor`."""

    def __init__(self, inner: Instance, axes: Mapping[str, int]) -> None:
        super().__init__(inner, axes)
        self._blocking = inner

    @property
    def executor(self) -> Executor:
        return self._blocking.executor  # type: ignore[attr-defined, no-any-return]

    def run_blocking(self, inputs: Tensors) -> dict[str, Array]:
        outputs = self._blocking.run_blocking(to_model(inputs, self._axes))  # type: ignore[attr-defined]
        return from_model(outputs, self._axes)


def with_batch_axes(instance: Instance, axes: Mapping[str, int]) -> Instance:
    """`instance` itself when every batch axis is 0, else wrapped (keeping RunsBlocking if it has it)."""
    if not axes:
        return instance
    if hasattr(instance, "run_blocking"):
        return BlockingBatchAxes(instance, axes)
    return BatchAxes(instance, axes)
