"""The ensemble scheduler: run an ensemble's steps as a DAG, each through its model's own batcher.

A step starts as soon as the tensors it reads exist, so independent steps run side by side; it is
admitted to the step model's batcher like any request to that model, so it batches with that
model's other traffic (other ensemble requests' steps included) and counts in its statistics.
Tensors pass between steps as the arrays scatter gave (no copies). The request's hard deadline
applies to every step: a step is not started once it has passed, and each step's admission carries
it. A step's error keeps its class (so its gRPC status) and names the step.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

from batcher.admission import Admission
from batcher.dynamic import DynamicBatcher
from batcher.errors import DeadlineExceeded
from batcher.stats import ModelStats
from batcher.types import Array, BatchingPolicy, Tensors
from protos import model_config_pb2 as mc
from server.errors import STATUS_BY_EXCEPTION, EnsembleStepFailed
from server.models.config import batching_policy
from server.models.ensemble_config import EnsemblePlan, Step
from server.observability.metrics_reasons import record_failed
from server.protocol.validate import Signature

log = logging.getLogger(__name__)


class StepModel(Protocol):
    """The part of a ModelVersion (models/manager.py) a step uses."""

    @property
    def signature(self) -> Signature: ...

    @property
    def batcher(self) -> DynamicBatcher: ...

    @property
    def stats(self) -> ModelStats: ...


Resolve = Callable[[str, str], StepModel]  # (model, version "") -> the version serving it now


def _named(exc: Exception, where: str) -> Exception:
    """`exc` again, its message prefixed with the step (same class: the same gRPC status); an
    unexpected error is logged and answered INTERNAL, naming the step only."""
    if not any(cls in STATUS_BY_EXCEPTION for cls in type(exc).__mro__):
        log.error("%s failed", where, exc_info=exc)
        return EnsembleStepFailed(f"{where} failed: internal error (details are in the server log)")
    try:
        renamed = type(exc)(f"{where}: {exc}")
    except Exception:  # a class whose constructor takes something else: keep it as it is
        return exc
    renamed.__cause__ = exc
    return renamed


class EnsembleScheduler:
    def __init__(
        self, plan: EnsemblePlan, resolve: Resolve, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.plan = plan
        self._resolve = resolve  # resolved per request: a step model's reload is picked up
        self._clock = clock

    async def run(self, inputs: Tensors, admission: Admission, priority: int) -> Tensors:
        """The ensemble's outputs for one request; raises the first failing step's error."""
        tensors: dict[str, Array] = dict(inputs)
        left = list(self.plan.steps)
        running: dict[asyncio.Task[Tensors], Step] = {}
        try:
            while left or running:
                for step in [s for s in left if all(t in tensors for t in s.input_map.values())]:
                    left.remove(step)
                    task = asyncio.ensure_future(self._step(step, tensors, admission.hard, priority))
                    running[task] = step
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    step = running.pop(task)
                    outputs = task.result()  # raises the step's (named) error
                    for model_output, tensor in step.output_map.items():
                        tensors[tensor] = outputs[model_output]
        finally:
            for task in running:
                task.cancel()  # our own step tasks: their requests leave their queues
            if running:
                await asyncio.gather(*running, return_exceptions=True)
        return {name: tensors[name] for name in self.plan.outputs}

    async def _step(
        self, step: Step, tensors: dict[str, Array], hard: float | None, priority: int
    ) -> Tensors:
        where = step.where(self.plan.name)
        try:
            served = self._resolve(step.model, step.version)
        except Exception as exc:
            raise _named(exc, where) from None
        inputs = {model_input: tensors[tensor] for model_input, tensor in step.input_map.items()}
        start_ns = time.perf_counter_ns()
        stats = served.stats
        try:
            if hard is not None and self._clock() >= hard:
                raise DeadlineExceeded("deadline exceeded before the step started (it was not run)")
            rows = served.signature.check_inputs(inputs)
            batcher = served.batcher
            a = batcher.admission(rows, deadline=hard, priority=priority)
            outputs: Tensors | None = batcher.run_now(inputs, a)
            if outputs is None:
                outputs = await batcher.enqueue(inputs, a)
        except asyncio.CancelledError:
            stats.record_canceled()
            raise
        except Exception as exc:
            record_failed(stats, time.perf_counter_ns() - start_ns, exc)
            raise _named(exc, where) from None
        stats.record_success(time.perf_counter_ns() - start_ns)
        return outputs


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
