"""An ensemble's own batcher (ModelVersion.batcher): it only settles admissions (rows against
max_batch_size, deadline, priority) and is never started; its steps' batchers run the work
(server/models/ensemble.py). Stopped when the ensemble's version is retired."""

from __future__ import annotations

from batcher.dynamic import DynamicBatcher
from batcher.stats import ModelStats
from batcher.types import BatchingPolicy, Tensors
from protos import model_config_pb2 as mc
from server.models.config import batching_policy


class _NoRuns:
    """The backend of an ensemble's batcher, which only settles admissions (rows against
    max_batch_size, deadline, priority) and is never started: the steps' batchers run the work."""

    async def run(self, inputs: Tensors) -> Tensors:
        raise RuntimeError("an ensemble's own batcher never runs")


def admission_batcher(config: mc.ModelConfig, stats: ModelStats, max_queue_size: int) -> DynamicBatcher:
    """The ModelVersion.batcher of an ensemble (see _NoRuns): InferJob settles its admission there."""
    policy: BatchingPolicy = batching_policy(
        config, default_max_queue_size=max_queue_size, max_batches_in_flight=1
    )
    return DynamicBatcher([_NoRuns()], policy, stats, name=f"ensemble {config.name}")
