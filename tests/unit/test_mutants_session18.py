"""batcher/run_batch.py and batcher/queue.py: the cases mutation testing found untested
(tests/MUTANTS.md, "Run of 2026-12-02 (eighteenth session, second part)"). A BatchRunner is built
here directly, on a fake backend and a fake clock, with the batch it runs handed to it as formation
would (a Flight taken from the Flights)."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest

from batcher.admission import Admission
from batcher.dynamic import DynamicBatcher
from batcher.errors import BatcherStopped, DeadlineExceeded, QueueTimedOut
from batcher.estimate import ServiceTimeEstimator
from batcher.flights import Flight, Flights
from batcher.forecast import WaitForecast
from batcher.form import NO_MARGIN, WakeMargin
from batcher.queue import Request, RequestQueue, expired_in_queue
from batcher.ragged import RaggedPlan
from batcher.run_batch import BatchRunner
from batcher.stats import ModelStats
from batcher.types import BatchingPolicy, Tensors
from batcher.watchdog import Instance, Watchdog
from tests.unit.test_batch_io import request
from tests.unit.test_mutants_dynamic import Clock, Gated, Make, make, turns_until
from tests.unit.test_mutants_dynamic import x as dyn_x

__all__ = ["make"]  # the fixture, imported for pytest


class Echo:
    """A backend answering each run with `outputs` (default: its inputs), after `gate` is set."""

    def __init__(self, outputs: Tensors | None = None) -> None:
        self.outputs = outputs
        self.gate = asyncio.Event()
        self.gate.set()
        self.started = asyncio.Event()
        self.runs: list[Tensors] = []

    async def run(self, inputs: Tensors) -> Tensors:
        self.runs.append(inputs)
        self.started.set()
        await self.gate.wait()
        return dict(inputs) if self.outputs is None else self.outputs


def runner(
    clock: Clock,
    stats: ModelStats,
    policy: BatchingPolicy | None = None,
    margin: WakeMargin = NO_MARGIN,
    name: str | None = "m",
) -> tuple[BatchRunner, Flights]:
    policy = policy or BatchingPolicy(max_batch_size=8)
    estimator = ServiceTimeEstimator()
    queue = RequestQueue(policy, clock)
    flights = Flights(lambda: 0)
    forecast = WaitForecast(estimator, queue, policy, 1, clock)
    watchdog = Watchdog(0.0, None, "m")
    if name is None:  # BatchRunner's default name
        made = BatchRunner(
            policy,
            stats,
            clock,
            estimator,
            forecast,
            watchdog,
            flights,
            lambda rows, nbytes: False,
            lambda: None,
            margin,
        )
    else:
        made = BatchRunner(
            policy,
            stats,
            clock,
            estimator,
            forecast,
            watchdog,
            flights,
            lambda rows, nbytes: False,
            lambda: None,
            margin,
            name,
        )
    return made, flights


def take(flights: Flights, batch: list[Request]) -> Flight:
    flights.take()  # as formation does, before the batch leaves the queue
    return Flight(batch)


def x(rows: int, value: float = 1.0) -> Tensors:
    return {"x": np.full((rows, 2), value, np.float32)}


# -- run_batch: boarding -------------------------------------------------------------------------


async def test_boarding_adds_its_expiries_to_those_counted_before() -> None:
    clock, stats = Clock(10.0), ModelStats()
    stats.expired = 5  # earlier expiries: boarding adds to them
    run, flights = runner(clock, stats)
    gone = request(x(1), 1, 1, hard=9.0)  # its caller went at its deadline, before the run
    gone.handle.future.cancel()
    expired = request(x(1), 1, 2, hard=9.5)  # past its deadline since formation: never computed
    live = request(x(1), 1, 3)
    be = Echo()
    await run.run(Instance(0, be), take(flights, [gone, expired, live]))
    assert stats.expired == 7
    with pytest.raises(DeadlineExceeded, match=r"^deadline exceeded while waiting in the queue$"):
        expired.handle.future.result()
    assert len(be.runs) == 1 and be.runs[0]["x"].shape == (1, 2)  # only the live one computed
    assert live.handle.future.result()["x"].shape == (1, 2)


async def test_a_queued_traced_request_notes_when_its_run_began() -> None:
    clock, stats = Clock(10.0), ModelStats()
    run, flights = runner(clock, stats)
    traced = request(x(2), 2, 1, trace=True)
    await run.run(Instance(0, Echo()), take(flights, [traced]))
    trace = traced.handle.trace
    assert trace is not None and trace.run is not None
    assert trace.taken_ns == trace.run.gather_ns  # the run's start, noted before it ran
    assert trace.taken_ns > 0


async def test_a_caller_gone_during_the_run_within_the_margin_of_its_deadline_counts_late() -> None:
    clock, stats = Clock(10.0), ModelStats()
    run, flights = runner(clock, stats, margin=WakeMargin(fixed_s=1.0))
    be = Echo()
    be.gate.clear()
    p = request(x(1), 1, 1, hard=10.5)  # the caller's copy may end by 9.5 (1 s margin)
    task = asyncio.create_task(run.run(Instance(0, be), take(flights, [p])))
    await be.started.wait()
    p.handle.future.cancel()  # its caller went during the run, before the server's deadline
    be.gate.set()
    await task
    assert stats.late == 1  # not the server's deadline (10.5), its caller's (by the margin)


async def test_a_run_whose_outputs_cannot_be_split_says_which_rows_in_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, stats = Clock(10.0), ModelStats()
    policy = BatchingPolicy(max_batch_size=8, ragged=RaggedPlan(inputs=frozenset({"x"})))
    run, flights = runner(clock, stats, policy, name=None)
    be = Echo({"y": np.zeros(3, np.float32)})  # one row per request, not per row
    batch = [request(x(1), 1, 1), request(x(2), 2, 2), request(x(1), 1, 3)]
    with caplog.at_level(logging.WARNING, logger="batcher.run_batch"):
        await run.run(Instance(0, be), take(flights, batch))
    failed = batch[1].handle.future.exception()
    assert failed is not None
    assert [r.getMessage() for r in caplog.records] == [
        f"batcher: 1 of 3 requests of a run of 4 rows (rows [1, 2, 1]) not answered: {failed} "
        "(output shapes {'y': (3,)})"
    ]


# -- queue: why a request is given up -------------------------------------------------------------


def basis(rows: int, now: float) -> str:
    return f"the floor of {rows} rows at {now:g}"


def fixed_run(run_s: float) -> RequestQueue:
    return RequestQueue(
        BatchingPolicy(max_batch_size=8), Clock(0.0), min_run_s=lambda rows, now: run_s, hop_s=0.1
    )


def test_gave_up_names_the_compute_the_margin_and_the_time_left() -> None:
    q = fixed_run(0.25)
    assert str(q.gave_up(3, 1.5, 1.0, ", while here")) == (
        "deadline cannot be met: about 250.0 ms of compute needed (the fastest recent run of 3 rows "
        "or fewer) plus a 100.0 ms margin, 500.0 ms left, while here"
    )
    named = RequestQueue(
        BatchingPolicy(max_batch_size=8), Clock(0.0), min_run_s=lambda r, n: 0.25, floor_basis=basis
    )
    assert "needed (the floor of 3 rows at 1), 500.0 ms left" in str(named.gave_up(3, 1.5, 1.0, ""))


def test_a_refusal_at_admission_names_the_requests_rows() -> None:
    q = fixed_run(0.0)
    a = Admission(rows=3, priority=1, arrival=0.0, deadline=1.5, policy_deadline=None, hard=1.5)
    with pytest.raises(DeadlineExceeded, match=r"\(the fastest recent run of 3 rows or fewer\)"):
        q.check(a, lambda rows: 2.0)


def test_gave_up_past_the_deadline_or_with_no_run_seen_is_the_deadline_passed() -> None:
    assert str(fixed_run(0.25).gave_up(3, 1.0, 1.0, ", while here")) == "deadline exceeded, while here"
    assert str(fixed_run(0.25).gave_up(3, None, 1.0, ", while here")) == "deadline exceeded, while here"
    assert str(fixed_run(0.0).gave_up(3, 2.0, 1.0, ", while here")) == "deadline exceeded, while here"


def pending(*, hard: float | None, reject_at: float | None = None, arrival: float = 0.0) -> Request:
    p = request(x(1), 1, 1, hard=hard)
    p.reject_at, p.arrival = reject_at, arrival
    return p


async def test_expired_in_queue_tells_the_queue_policy_timeout_from_the_deadline() -> None:

    timed_out = expired_in_queue(pending(hard=None, reject_at=1.0, arrival=0.25), 1.0)
    assert type(timed_out) is QueueTimedOut  # exactly at its timeout, no deadline
    assert str(timed_out) == (
        "request timeout expired: queued 750.0 ms, past the model's queue policy timeout "
        "(default_timeout_microseconds, or the request's shorter timeout; timeout_action REJECT)"
    )
    assert type(expired_in_queue(pending(hard=2.0, reject_at=1.0), 1.5)) is QueueTimedOut
    at_once = expired_in_queue(pending(hard=1.0, reject_at=1.0), 1.0)  # both at once: the deadline
    assert type(at_once) is DeadlineExceeded
    assert str(at_once) == "deadline exceeded while waiting in the queue"


async def test_expired_in_queue_before_the_deadline_names_the_compute_only_when_known() -> None:

    early = pending(hard=2.0)
    assert str(expired_in_queue(early, 1.0)) == "deadline exceeded while waiting in the queue"
    assert str(expired_in_queue(early, 1.0, 0.5)) == (
        "deadline cannot be met: about 500.0 ms of compute needed (the fastest recent run of 1 rows "
        "or fewer), 1000.0 ms left, while waiting in the queue"
    )
    # At the deadline itself it has passed: no compute figure.
    assert str(expired_in_queue(early, 2.0, 0.5)) == "deadline exceeded while waiting in the queue"


# -- queue: the expiry timer ------------------------------------------------------------------------


class Timers:
    """A RequestQueue on a standing clock at 0 whose least run is `run_s` (changeable), noting how
    late each expiry timer ran."""

    def __init__(self, run_s: float, floor_basis: bool = False) -> None:
        self.run_s = run_s
        self.late: list[float] = []
        self.queue = RequestQueue(
            BatchingPolicy(max_batch_size=8),
            Clock(0.0),
            min_run_s=lambda rows, now: self.run_s,
            on_late=lambda late_s, now: self.late.append(late_s),
            floor_basis=basis if floor_basis else None,
        )

    def admit(self, hard: float | None, reject_at: float | None = None) -> Request:
        a = Admission(rows=1, priority=1, arrival=0.0, deadline=hard, policy_deadline=reject_at, hard=hard)
        return self.queue.admit(x(1), a._replace(reject_at=reject_at), lambda rows: 0.0)


async def outcome(p: Request) -> BaseException:
    with pytest.raises(DeadlineExceeded) as caught:
        await asyncio.wait_for(p.handle.future, 5.0)
    return caught.value


async def test_a_timer_for_the_deadline_waits_again_when_the_least_run_moved_down() -> None:
    t = Timers(run_s=0.01)
    p = t.admit(hard=0.01)  # its give-up point is now: the timer is due at once
    t.run_s = 0.0  # the estimate faded before it fired: the deadline itself is the point now
    assert str(await outcome(p)) == "deadline exceeded while waiting in the queue"
    assert len(t.late) == 2  # fired, armed again for the difference, fired again
    assert all(late > 0 for late in t.late)  # how late past due, never how early


async def test_a_timer_exactly_one_millisecond_short_of_the_new_point_expires_now() -> None:
    t = Timers(run_s=0.002)
    p = t.admit(hard=0.002)  # give-up point 0.0, due at once
    t.run_s = 0.001  # the new point 0.001 s later: not more than the 1 ms let pass
    await outcome(p)
    assert len(t.late) == 1


async def test_a_timer_for_the_queue_policy_timeout_expires_without_waiting_for_the_deadline() -> None:
    t = Timers(run_s=0.0)
    p = t.admit(hard=0.05, reject_at=0.0)

    assert type(await outcome(p)) is QueueTimedOut
    assert len(t.late) == 1


async def test_an_expiry_names_what_the_least_run_is() -> None:
    t = Timers(run_s=0.01, floor_basis=True)
    p = t.admit(hard=0.02)
    assert str(await outcome(p)) == (
        "deadline cannot be met: about 10.0 ms of compute needed (the floor of 1 rows at 0), "
        "20.0 ms left, while waiting in the queue"
    )


# -- dynamic: requests failed or gone while queued --------------------------------------------------


def queued(
    b: DynamicBatcher, rid: float, deadline: float | None = None, rows: int = 1
) -> asyncio.Task[Tensors]:
    return asyncio.ensure_future(b.submit(dyn_x(rid, rows), rows, deadline=deadline))


async def test_callers_gone_at_their_deadlines_while_queued_each_count_expired(make: Make) -> None:
    clock, stats = Clock(), ModelStats()
    be = Gated(asyncio.Event())
    b = make(be, clock=clock, stats=stats)
    running = queued(b, 1)
    await be.started.wait()  # the only instance is busy: the next two wait in the queue
    waiting = [queued(b, 2, deadline=clock.now + 10.0), queued(b, 3, deadline=clock.now + 10.0)]
    await turns_until(lambda: b.queued_requests == 2)
    clock.now += 20.0  # past both deadlines (their timers, on real time, are 10 s off)
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    assert stats.expired == 2
    running.cancel()


class Fails(Exception):
    pass


async def test_an_expiry_at_formation_names_what_the_least_run_is(make: Make) -> None:
    clock, stats = Clock(), ModelStats()

    def fail(inputs: Tensors) -> Tensors:
        raise Fails("no outputs")  # the run observes nothing: the estimate stays as it was

    be = Gated(asyncio.Event(), answer=fail)
    b = make(be, clock=clock, stats=stats)
    # 2-row runs take 1 s at least (fading), by 3 of them (a 1-row run's 0.1 s does not bound them):
    # what that least run is, in words, is not the default's "the fastest recent run of ...".
    b.estimator.observe(1, 0.1, clock.now)
    for _ in range(3):
        b.estimator.observe(2, 1.0, clock.now)
    first = queued(b, 1)
    await be.started.wait()
    # Given up at about 3 s from now: its timer is due then, in real time.
    late = queued(b, 2, deadline=clock.now + 4.0, rows=2)
    await turns_until(lambda: b.queued_requests == 1)
    clock.now += 3.5  # past its give-up point by then (the floor faded to ~0.6 s), before its timer
    be.gate.set()  # the instance is free: formation finds it past that point
    with pytest.raises(Fails):
        await first
    with pytest.raises(DeadlineExceeded, match=r"\(the fastest of 3 recent runs of 2 rows\)") as caught:
        await asyncio.wait_for(late, 5.0)
    assert str(caught.value).endswith("ms left, while waiting in the queue")
    assert stats.expired == 1


async def test_stop_fails_what_is_left_as_stopped_unless_handing_over(make: Make) -> None:
    be = Gated(asyncio.Event())
    b = make(be)
    running = queued(b, 1)
    await be.started.wait()
    left = queued(b, 2)
    await turns_until(lambda: b.queued_requests == 1)
    await b.stop(timeout_s=0.0)  # no handover by default: never computed, and not to retry
    outcomes = await asyncio.gather(running, left, return_exceptions=True)
    assert [type(o) for o in outcomes] == [BatcherStopped, BatcherStopped]


async def test_a_batcher_not_stopped_says_false_not_just_falsy(make: Make) -> None:
    b = make(Gated(), start=False)
    assert b.stopped is False
    await b.stop()
    assert b.stopped is True
