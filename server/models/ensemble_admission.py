"""An ensemble's admission: its own batcher, which settles a request's terms, and the check of a
request with a deadline against its whole path of steps before any step runs.

The batcher (ModelVersion.batcher) only settles admissions (rows against max_batch_size, deadline,
priority) and is never started; its steps' batchers run the work (server/models/ensemble.py).
Stopped when the ensemble's version is retired.

`admit_whole` refuses, before its first step, a request whose steps cannot all end before its
deadline, as a direct request is refused at its model's admission (batcher/queue.py): "deadline
cannot be met" (DEADLINE_EXCEEDED) when the least compute along a chain of its steps (each step
model's proven lower bound, `WaitForecast.now`, with the queue's hop margin for each) is more than
the time left; "overloaded" (RESOURCE_EXHAUSTED) when a step's forecast end is past the deadline.
A step's forecast end is the later of its inputs' forecast end plus its own run and its model's
forecast of the queued, running and pledged work ahead of it (`WaitForecast.shed_s`), plus, for
a step after others at a busy model, a batch of newer work its model may have just taken
(`WaitForecast.turn_s`), and the hop: past its deadline less the hop it is dropped unrun (without
these two, 10-15% of a shared step model's rows under 2x overload went to requests whose second
step was then dropped). Each refusal names the ensemble and the first step, in dependency order,
that does not fit. Each step had been admitted alone when it started: a first step was computed
for requests whose second step was then refused (all of them where the two could not fit the
deadline; under 2x overload 95% of a shared step model's rows).

An admitted request pledges its steps' rows at their models (`Pledges`), each released when the
step reaches its queue, so what is admitted after it is forecast behind them; its steps carry the
time of its admission (Admission.since), which orders them before that later work and spares them
a second shed check. A request without a deadline is not checked and pledges nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from batcher.admission import Admission
from batcher.dynamic import DynamicBatcher
from batcher.errors import BatcherError, Overloaded, cannot_be_met
from batcher.forecast import WaitForecast
from batcher.stats import ModelStats
from batcher.types import BatchingPolicy, Tensors
from protos import model_config_pb2 as mc
from server.models.config import batching_policy
from server.models.ensemble_config import EnsemblePlan, Step

if TYPE_CHECKING:
    from server.models.ensemble import Resolve


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


class Pledges:
    """The rows an admitted ensemble request pledged at its steps' models (WaitForecast.pledge), by
    step: its own steps by index, a nested ensemble's under that step's index (`nested`)."""

    __slots__ = ("_held", "_path")

    def __init__(self, held: dict[tuple[int, ...], tuple[WaitForecast, int, int]] | None = None,
                 path: tuple[int, ...] = ()) -> None:  # fmt: skip
        self._held = {} if held is None else held
        self._path = path

    @property
    def depth(self) -> int:
        """0 for the request's own ensemble, 1 for one its step nests, and so on."""
        return len(self._path)

    def add(self, index: int, forecast: WaitForecast, rows: int, level: int) -> None:
        forecast.pledge(rows, level)
        self._held[(*self._path, index)] = (forecast, rows, level)

    def rows_at(self, forecast: WaitForecast) -> int:
        """The rows the request holds pledged at the model of `forecast`."""
        return sum(rows for at, rows, _ in self._held.values() if at is forecast)

    def nested(self, index: int) -> Pledges:
        """The pledges of the nested ensemble that step `index` runs."""
        return Pledges(self._held, (*self._path, index))

    def release(self, index: int) -> None:
        """Step `index` reached its queue (or failed before it): its rows are queued ones now."""
        held = self._held.pop((*self._path, index), None)
        if held is not None:
            held[0].unpledge(held[1], held[2])

    def release_all(self) -> None:
        """The request (or this nested ensemble's part of it) ended: what is left will not come."""
        depth = len(self._path)
        for key in [k for k in self._held if k[:depth] == self._path]:
            forecast, rows, level = self._held.pop(key)
            forecast.unpledge(rows, level)


@dataclass(frozen=True, slots=True)
class PathEnd:
    """When a step (or an ensemble's outputs) would end, in seconds from the admission: at the
    earliest (`least_s`: the least compute along the chain of steps that sets it, `runs` those
    steps' (name, seconds, what the figure is), `hops` margins of `margin_s` in all: each step's
    model's measured hop, batcher/hop.py), and as forecast (`forecast_s`)."""

    least_s: float = 0.0
    forecast_s: float = 0.0
    runs: tuple[tuple[str, float, str], ...] = ()
    hops: int = 0
    margin_s: float = 0.0


def _later(ends: Iterable[PathEnd]) -> PathEnd:
    """When all of `ends` have come: the latest least end (with its chain), the latest forecast."""
    ends = list(ends)
    least = max(ends, key=lambda e: e.least_s, default=PathEnd())
    forecast_s = max((e.forecast_s for e in ends), default=0.0)
    return PathEnd(least.least_s, forecast_s, least.runs, least.hops, least.margin_s)


def path_ends(
    plan: EnsemblePlan,
    resolve: Resolve,
    a: Admission,
    priority: int,
    now: float,
    pledges: Pledges,
    ready: PathEnd = PathEnd(),
) -> tuple[PathEnd, dict[int, PathEnd]]:
    """When `plan`'s outputs and each of its steps would end for request `a` (rows, deadline)
    admitted at `now`, its inputs ready at `ready`; pledges each step's rows on the way, so that a
    later step on the same model is forecast behind the request's own earlier ones."""
    made: dict[str, PathEnd] = {}  # ensemble tensor -> when it exists
    ends: dict[int, PathEnd] = {}
    for step in plan.steps:  # in dependency order
        start = _later([ready, *(made.get(t, ready) for t in step.input_map.values())])
        end = ends[step.index] = _step_end(step, plan.name, resolve, a, priority, now, pledges, start)
        for tensor in step.output_map.values():
            made[tensor] = end
    return _later(made.get(t, ready) for t in plan.outputs), ends


def _step_end(
    step: Step,
    ensemble: str,
    resolve: Resolve,
    a: Admission,
    priority: int,
    now: float,
    pledges: Pledges,
    start: PathEnd,
) -> PathEnd:
    try:
        served = resolve(step.model, step.version, None)  # unrouted: no policy's side effects
        if served.ensemble is not None:
            return served.ensemble.path_end(a, priority, now, pledges.nested(step.index), start)[0]
        batcher = served.batcher
        settled = batcher.admission(a.rows, deadline=a.hard, priority=priority)
    except Exception:  # gone, not ready, no longer fitting: the step's own run says so
        return start
    forecast, rows, level = batcher.forecast, settled.rows, settled.priority
    run_s = forecast.now(rows)
    wait_s = forecast.shed_s(level, rows)  # behind what is queued and pledged: its own earlier steps too
    # Coming later, it may find its model just took a batch of newer work (WaitForecast.turn_s).
    turn_s = forecast.turn_s(level, pledges.rows_at(forecast)) if start.forecast_s > 0.0 else 0.0
    pledges.add(step.index, forecast, rows, level)
    if run_s <= 0.0:  # nothing known of its cost: it refuses nothing (as at a model's admission)
        return PathEnd(start.least_s, max(start.forecast_s, wait_s), start.runs, start.hops, start.margin_s)
    # With the hop, as the step's give-up point has it: a step forecast to end later than its
    # deadline less the hop would be dropped unrun in its queue, its earlier steps' compute lost.
    # Its model's margin at most (the former fixed 5 ms), not as measured now: a later step's own
    # admission reads its margin when it runs, and one grown meanwhile (its model busy with others'
    # batches) refused it after earlier steps had run, their compute wasted (a tester, session 59:
    # 128 of 192 first steps at 8 in flight with 3 ms).
    hop_s = batcher.hop.cap_s
    forecast_s = max(start.forecast_s + run_s, wait_s) + turn_s + hop_s
    name = f"step {step.index} (model '{step.model}')"
    if pledges.depth:  # a nested ensemble's step
        name = f"{name} of ensemble '{ensemble}'"
    least_s = start.least_s + run_s + hop_s
    runs = (*start.runs, (name, run_s, batcher.estimator.floor_basis(rows, now)))
    return PathEnd(least_s, forecast_s, runs, start.hops + 1, start.margin_s + hop_s)


def admit_whole(plan: EnsemblePlan, resolve: Resolve, a: Admission, priority: int, now: float) -> Pledges:
    """Check request `a` against `plan`'s whole path at `now` (the module docstring), raising
    DeadlineExceeded or Overloaded named as a step's error; else its pledges, which its caller
    releases (`Pledges.release_all`) when it ends. Without a deadline, or past it (its first step
    says so), nothing is checked or pledged."""
    pledges = Pledges()
    if a.hard is None or a.hard <= now:
        return pledges
    try:
        _, ends = path_ends(plan, resolve, a, priority, now, pledges)
        _check(plan, ends, a, a.hard - now)
    except BaseException:
        pledges.release_all()
        raise
    return pledges


def _check(plan: EnsemblePlan, ends: dict[int, PathEnd], a: Admission, left_s: float) -> None:
    """Raise for the first step, in dependency order, whose least end, else whose forecast end,
    is past the `left_s` the deadline leaves."""
    for step in plan.steps:
        end = ends[step.index]
        if end.hops and end.least_s > left_s:
            basis = "; then ".join(f"{name}: {run_s * 1e3:.1f} ms, {what}" for name, run_s, what in end.runs)
            unmet = cannot_be_met(a.rows, end.least_s - end.margin_s, end.margin_s, left_s, basis=basis)
            raise _named(unmet, plan, step)
    for step in plan.steps:
        wait_s = ends[step.index].forecast_s
        if wait_s > left_s:
            why = Overloaded(
                f"overloaded: about {wait_s * 1e3:.1f} ms until an answer behind the queued work, "
                f"{left_s * 1e3:.1f} ms left before the deadline",
                retry_after_s=wait_s,
            )
            raise _named(why, plan, step)


def _named(exc: BatcherError, plan: EnsemblePlan, step: Step) -> BatcherError:
    """`exc` as a step's error reads (ensemble_notes.named_failure), its retry hint kept."""
    named = type(exc)(f"in ensemble '{plan.name}', {exc}; step {step.index} (model '{step.model}')",
                      retry_after_s=exc.retry_after_s)  # fmt: skip
    return named
