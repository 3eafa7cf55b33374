"""The ensemble scheduler with fake step models and clocks: DAG order, the deadline between steps,
a failing step named with its own error class."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest

from batcher.admission import Admission
from batcher.dynamic import DynamicBatcher
from batcher.errors import DeadlineExceeded, QueueFull
from batcher.stats import ModelStats
from batcher.types import BatchingPolicy, Tensors
from protos import model_config_pb2 as mc
from server.errors import STATUS_BY_EXCEPTION, ModelNotFound, ModelNotReady
from server.models.config import parse_config
from server.models.ensemble import EnsembleScheduler
from server.models.ensemble_config import plan_ensemble
from server.protocol.validate import Signature
from tests.support.ensemble_repo import ENSEMBLES

CONFIG = "max_batch_size: 8\ninput [ { name: \"%s\" data_type: TYPE_FP32 dims: [ -1 ] } %s ]\n" \
    "output [ { name: \"y\" data_type: TYPE_FP32 dims: [ -1 ] } ]\n"  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeStep:
    """A step model whose backend applies `fn` and records its calls (and may move a clock)."""

    name: str
    fn: object
    clock: Clock | None = None
    advance_to: float = 0.0
    calls: list[Tensors] = field(default_factory=list)
    labels: dict[str, tuple[str, ...]] = field(default_factory=dict)
    ensemble: None = None  # not an ensemble itself
    sequences: None = None  # no sequence_batching
    response_cache: None = None  # none: every step runs
    version_str: str = "1"

    def __post_init__(self) -> None:
        second = ', { name: "b" data_type: TYPE_FP32 dims: [ -1 ] }' if self.name == "add" else ""
        config = parse_config(CONFIG % ("a" if self.name == "add" else "x", second), self.name)
        config.name = self.name
        self.config: mc.ModelConfig = config
        self.signature = Signature.from_config(config)
        self.stats = ModelStats()
        self.batcher = DynamicBatcher([self], BatchingPolicy(max_batch_size=8), self.stats, clock=Clock())

    async def run(self, inputs: Tensors) -> Tensors:
        self.calls.append(inputs)
        if self.clock is not None:
            self.clock.now = self.advance_to
        return {"y": self.fn(**inputs)}  # type: ignore[operator]


def _scheduler(ensemble: str, steps: dict[str, FakeStep], clock: Clock) -> EnsembleScheduler:
    config = parse_config(ENSEMBLES[ensemble], "config.pbtxt")
    config.name = ensemble
    plan = plan_ensemble(config, "config.pbtxt", lambda s: steps[s.model].config)
    return EnsembleScheduler(plan, lambda model, version, routed: steps[model], clock=clock)


def _admission(hard: float | None) -> Admission:
    return Admission(rows=1, priority=1, arrival=0.0, deadline=hard, policy_deadline=None, hard=hard)


def _steps(**extra: FakeStep) -> dict[str, FakeStep]:
    steps = {
        "add_one": FakeStep("add_one", lambda x: x + 1),
        "double": FakeStep("double", lambda x: x * 2),
        "add": FakeStep("add", lambda a, b: a + b),
    }
    return {**steps, **extra}


async def _run(ensemble: str, steps: dict[str, FakeStep], clock: Clock, hard: float | None) -> Tensors:
    for step in steps.values():
        step.batcher.start()
    try:
        x = np.arange(4, dtype=np.float32).reshape(1, 4)
        return await _scheduler(ensemble, steps, clock).run({"IN": x}, _admission(hard), 0)
    finally:
        for step in steps.values():
            await step.batcher.stop()


def test_dag_steps_run_after_their_inputs() -> None:
    steps = _steps()
    out = asyncio.run(_run("dag", steps, Clock(), None))
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    np.testing.assert_allclose(out["OUT"], 3 * x + 1)
    assert out["A"] is steps["add"].calls[0]["a"]  # passed on, not copied
    assert all(s.stats.success.count == 1 for s in steps.values())


def test_a_step_is_not_started_past_the_deadline() -> None:
    clock = Clock()
    steps = _steps(add_one=FakeStep("add_one", lambda x: x + 1, clock=clock, advance_to=200.0))
    with pytest.raises(
        DeadlineExceeded, match=r"^in ensemble 'linear', deadline .*; step 2 \(model 'double'\)$"
    ):
        asyncio.run(_run("linear", steps, clock, hard=100.0))
    assert steps["double"].calls == []


def test_a_failing_step_keeps_its_error_class_and_is_named() -> None:
    def refuse(x: np.ndarray) -> np.ndarray:
        raise QueueFull("queue is full")

    steps = _steps(double=FakeStep("double", refuse))
    with pytest.raises(
        QueueFull, match=r"^in ensemble 'linear', queue is full.*; step 2 \(model 'double'\)$"
    ):
        asyncio.run(_run("linear", steps, Clock(), None))


def test_a_step_model_gone_from_the_index_is_unavailable_not_unknown() -> None:
    """A step model removed from the repository (poll mode) or unloaded left the index before the
    ensemble was marked unavailable: its lookup's NOT_FOUND reached the caller, a status no client
    retries (a tester: 9 of 37,000 requests while a step's directory came and went)."""
    steps = _steps()
    config = parse_config(ENSEMBLES["linear"], "config.pbtxt")
    config.name = "linear"
    plan = plan_ensemble(config, "config.pbtxt", lambda s: steps[s.model].config)

    def resolve(model: str, version: str, routed: object) -> FakeStep:
        if model == "double":
            raise ModelNotFound("Request for unknown model: 'double' is not found")
        return steps[model]

    async def scenario() -> None:
        steps["add_one"].batcher.start()
        try:
            x = np.arange(4, dtype=np.float32).reshape(1, 4)
            await EnsembleScheduler(plan, resolve).run({"IN": x}, _admission(None), 0)
        finally:
            await steps["add_one"].batcher.stop()

    with pytest.raises(ModelNotReady) as gone:
        asyncio.run(scenario())
    assert str(gone.value) == (
        "in ensemble 'linear', model 'double' is not ready (unavailable: Request for unknown model: "
        "'double' is not found); step 2 (model 'double')"
    )
    assert STATUS_BY_EXCEPTION[ModelNotReady] is grpc.StatusCode.UNAVAILABLE


def test_batch_dims_fitted_between_batching_and_non_batching_steps() -> None:
    from server.models.ensemble import fit_batch_dim

    row = np.zeros(16, np.float32)
    assert fit_batch_dim(row, False, (-1,), True).shape == (1, 16)  # into a batching model
    assert fit_batch_dim(row, False, (4, 4), True).shape == (16,)  # no match: left to the step's check
    one = np.zeros((1, 16), np.float32)
    assert fit_batch_dim(one, True, (16,), False).shape == (16,)  # batch of 1 into a non-batching model
    assert fit_batch_dim(one, True, (1, 16), False).shape == (1, 16)  # the full shape already fits
    assert fit_batch_dim(np.zeros((2, 16)), True, (16,), False).shape == (2, 16)
    assert fit_batch_dim(one, True, (16,), True) is one  # both batch: untouched


@dataclass
class HeldStep(FakeStep):
    """A step whose run waits until released."""

    release: asyncio.Event | None = None

    async def run(self, inputs: Tensors) -> Tensors:
        self.calls.append(inputs)
        assert self.release is not None
        await self.release.wait()
        return {"y": inputs["x"]}


def test_a_step_stopped_because_its_sibling_failed_is_not_counted_as_the_callers_cancel() -> None:
    """CANCELED is "the caller went away": a step the ensemble stopped itself counted as that."""

    def refuse(x: np.ndarray) -> np.ndarray:
        raise QueueFull("queue is full")

    async def scenario() -> FakeStep:
        held = HeldStep("add_one", lambda x: x, release=asyncio.Event())
        steps = _steps(add_one=held, double=FakeStep("double", refuse))
        for step in steps.values():
            step.batcher.start()
        try:
            x = np.arange(4, dtype=np.float32).reshape(1, 4)
            with pytest.raises(QueueFull):
                await _scheduler("dag", steps, Clock()).run({"IN": x}, _admission(None), 0)
        finally:
            assert held.release is not None
            held.release.set()
            for step in steps.values():
                await step.batcher.stop()
        return held

    held = asyncio.run(scenario())
    assert held.calls  # it was running when its sibling failed
    assert held.stats.failures["CANCELED"] == 0


def test_an_unexpected_step_failure_is_logged_with_the_requests_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """3,000 such lines lacked model, version and request id: they could not be joined to requests."""
    from protos import grpc_service_pb2 as pb
    from server.models.ensemble_config import Step
    from server.models.ensemble_notes import named_failure

    step = Step(index=2, model="gather", version="", input_map={}, output_map={})
    request = pb.ModelInferRequest(model_name="pipe", model_version="1", id="req-7")
    with caplog.at_level("ERROR"):
        named_failure(RuntimeError("boom"), "pipe", step, request)
    (record,) = caplog.records
    assert (record.model, record.version, record.request_id) == ("pipe", "1", "req-7")  # type: ignore[attr-defined]
