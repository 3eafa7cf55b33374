"""A property of the DynamicBatcher (batcher/dynamic.py): whatever the arrivals, deadlines,
cancellations and backend failures, every submitted request is settled exactly once (a result, one
error, or the caller's own cancellation), rows in = rows out, and nothing is computed twice or
after it was dropped.

Hypothesis draws a script of steps; a scripted backend holds each run until the script ends it
(with outputs, an error, or outputs of the wrong size). The batcher reads a fake clock the script
advances; the queue's expiry timers run on the loop's own clock. No sleeps: the loop is turned
with `asyncio.sleep(0)` and the end is awaited with generous bounds.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from batcher import (
    BatcherStopped,
    BatchingPolicy,
    DeadlineExceeded,
    DynamicBatcher,
    ModelStats,
    QueueFull,
    Tensors,
)

LONG = 10.0  # an upper bound no healthy scenario comes near


@dataclass(eq=False)
class Run:
    ids: list[int]
    rows: int
    outcome: asyncio.Future[str]


class ScriptedBackend:
    """y = 2 * x, once the script ends the run: "ok", "fail" (raises) or "short" (a row missing)."""

    def __init__(self) -> None:
        self.runs: list[Run] = []
        self.open = False  # at the end: every run ends "ok" at once

    async def run(self, inputs: Tensors) -> Tensors:
        x = inputs["x"]
        run = Run([int(v) for v in x[:, 0]], x.shape[0], asyncio.get_running_loop().create_future())
        self.runs.append(run)
        if self.open:
            run.outcome.set_result("ok")
        outcome = await run.outcome
        if outcome == "fail":
            raise RuntimeError("backend failed")
        return {"y": (x[:-1] if outcome == "short" else x) * 2}

    def pending(self) -> list[Run]:
        return [run for run in self.runs if not run.outcome.done()]


@dataclass
class Sent:
    rows: int
    task: asyncio.Task[Tensors]
    cancelled_while_queued: bool = False


@dataclass
class World:
    batcher: DynamicBatcher
    backends: list[ScriptedBackend]
    now: list[float]
    sent: list[Sent] = field(default_factory=list)
    loop_errors: list[dict[str, Any]] = field(default_factory=list)

    def computed_ids(self) -> set[int]:
        return {i for be in self.backends for run in be.runs for i in run.ids}


SUBMIT = st.tuples(
    st.just("submit"),
    st.integers(1, 4),  # rows
    st.integers(0, 3),  # priority (0: the default)
    st.sampled_from([None, None, 0.002, 0.02, 1.0]),  # the request's timeout, seconds
)
STEPS = st.one_of(
    SUBMIT,
    SUBMIT,
    st.tuples(st.just("cancel"), st.integers(0, 40)),
    st.tuples(st.just("finish"), st.sampled_from(["ok", "ok", "ok", "fail", "short"])),
    st.tuples(st.just("tick"), st.sampled_from([0.001, 0.01, 0.5])),
    st.tuples(st.just("turn"), st.integers(1, 3)),
)


@st.composite
def scenario_policies(draw: st.DrawFn) -> BatchingPolicy:
    mbs = draw(st.integers(1, 6))
    return BatchingPolicy(
        max_batch_size=mbs,
        preferred_batch_sizes=tuple(draw(st.sets(st.integers(1, mbs), max_size=2))),
        max_queue_delay_s=draw(st.sampled_from([0.0, 0.0, 0.005])),
        idle_dispatch=draw(st.booleans()),
        max_queue_size=draw(st.sampled_from([4, 64])),
        priority_levels=2,
        max_batches_in_flight=draw(st.integers(1, 2)),
    )


async def step(world: World, op: tuple[Any, ...]) -> None:
    b = world.batcher
    kind = op[0]
    if kind == "submit":
        _, rows, priority, timeout_s = op
        rid = len(world.sent)
        inputs = {"x": np.full((min(rows, b.policy.max_batch_size), 2), rid, np.float32)}
        coro = b.submit(inputs, inputs["x"].shape[0], priority=priority, timeout_s=timeout_s)
        world.sent.append(Sent(inputs["x"].shape[0], asyncio.ensure_future(coro)))
    elif kind == "cancel" and world.sent:
        rid = op[1] % len(world.sent)
        sent = world.sent[rid]
        if not sent.task.done():
            sent.cancelled_while_queued = rid not in world.computed_ids()
            sent.task.cancel()
    elif kind == "finish":
        pending = [run for be in world.backends for run in be.pending()]
        if pending:
            pending[0].outcome.set_result(op[1])
    elif kind == "tick":
        world.now[0] += op[1]
    for _ in range(op[1] if kind == "turn" else 1):
        await asyncio.sleep(0)


async def finish_everything(world: World, drain: bool) -> None:
    for be in world.backends:
        be.open = True
        for run in be.pending():
            run.outcome.set_result("ok")
    assert world.batcher.accepting, "a dispatch task failed"
    await asyncio.wait_for(world.batcher.stop(drain=drain, timeout_s=LONG), LONG)
    tasks = [sent.task for sent in world.sent]
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=LONG)
        assert not pending, "a request got no outcome"


async def play(policy: BatchingPolicy, instances: int, steps: list[tuple[Any, ...]], drain: bool) -> World:
    loop = asyncio.get_running_loop()
    backends = [ScriptedBackend() for _ in range(instances)]
    now = [1000.0]
    stats = ModelStats()
    world = World(DynamicBatcher(backends, policy, stats, clock=lambda: now[0]), backends, now)
    loop.set_exception_handler(lambda _, context: world.loop_errors.append(context))
    world.batcher.start()
    for op in steps:
        await step(world, op)
    await finish_everything(world, drain)
    check(world, stats)
    return world


def outcome_of(run: Run) -> str:
    return run.outcome.result()


def check(world: World, stats: ModelStats) -> None:
    b = world.batcher
    assert not world.loop_errors, world.loop_errors  # e.g. a future resolved twice
    assert b.queued_requests == 0 and b.in_flight_batches == 0
    runs = [run for be in world.backends for run in be.runs]
    run_of: dict[int, Run] = {}
    for run in runs:
        assert 0 < run.rows <= b.policy.max_batch_size
        assert run.rows == sum(world.sent[i].rows for i in set(run.ids))  # rows in
        for i in set(run.ids):
            assert i not in run_of, f"request {i} was computed twice"
            run_of[i] = run
            assert run.ids.count(i) == world.sent[i].rows  # its rows, together
    ok_runs = [run for run in runs if outcome_of(run) == "ok"]
    # Rows out, less those of requests the run ended too late for (Triton counts successes only).
    # A caller cancelled after its late answer was set hides which it was: bounds, then.
    computed = [
        (rid, sent)
        for rid, sent in enumerate(world.sent)
        if rid in run_of and outcome_of(run_of[rid]) == "ok"
    ]
    late = [
        s.rows
        for _, s in computed
        if not s.task.cancelled() and isinstance(s.task.exception(), DeadlineExceeded)
    ]
    maybe = [s.rows for _, s in computed if s.task.cancelled()]
    rows_out = sum(run.rows for run in ok_runs) - sum(late)
    assert rows_out - sum(maybe) <= stats.inference_count <= rows_out
    assert stats.execution_count == len(ok_runs)
    for rid, sent in enumerate(world.sent):
        check_outcome(rid, sent, run_of.get(rid))


def check_outcome(rid: int, sent: Sent, run: Run | None) -> None:
    """Exactly one outcome, and the right one for what happened to the request's run."""
    task = sent.task
    assert task.done()
    if task.cancelled():
        assert not (sent.cancelled_while_queued and run is not None), f"{rid} computed after cancel"
        return
    exc = task.exception()
    if exc is None:
        assert run is not None and outcome_of(run) == "ok"
        y = task.result()["y"]
        assert y.shape == (sent.rows, 2) and (y == 2 * rid).all()  # its own rows, all of them
        return
    if run is None:  # never computed: refused, expired or stopped before a run
        assert isinstance(exc, (QueueFull, DeadlineExceeded, BatcherStopped)), repr(exc)
        return
    expected: type[BaseException] = {"ok": DeadlineExceeded, "fail": RuntimeError, "short": ValueError}[
        outcome_of(run)
    ]
    assert isinstance(exc, expected), (rid, outcome_of(run), repr(exc))


@given(
    policy=scenario_policies(),
    instances=st.integers(1, 2),
    steps=st.lists(STEPS, max_size=60),
    drain=st.booleans(),
)
def test_every_request_is_settled_exactly_once_with_its_own_rows(
    policy: BatchingPolicy, instances: int, steps: list[tuple[Any, ...]], drain: bool
) -> None:
    asyncio.run(play(policy, instances, steps, drain))
