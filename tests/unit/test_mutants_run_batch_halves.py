"""batcher/run_batch.py: a batch refused for its inputs, run again in halves (`_halves_again`,
`_still_wanted`): the cases mutation testing found untested. A BatchRunner is built directly (as in
test_mutants_session18.py) on a scripted async backend: each run's requests are told by their rows'
values (request k's rows hold k), and the script may refuse a run, fail it, or move the clock."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pytest

from batcher.errors import ComputedLate, DeadlineExceeded, OutputNotSplit, RunTimedOut
from batcher.estimate import ServiceTimeEstimator
from batcher.flights import Flights
from batcher.forecast import WaitForecast
from batcher.form import WakeMargin
from batcher.queue import Request, RequestQueue
from batcher.ragged import RaggedPlan
from batcher.run_batch import BatchRunner
from batcher.stats import ModelStats
from batcher.types import Backend, BatchingPolicy, Tensors
from batcher.watchdog import ExpiredUnrun, Instance, Watchdog
from tests.unit.test_batch_io import request
from tests.unit.test_batcher_dynamic import Refused
from tests.unit.test_mutants_dynamic import Clock
from tests.unit.test_mutants_session18 import runner, take, x

HALVES = "m: a batch of %d requests refused for its inputs; running its halves again"


class Script:
    """An async backend answering y = 2 * x (`per_request`: one row per request, 2 * its id);
    `act(ids)`, given the ids of the run's requests in order, may raise instead or move the clock.
    `runs`: each run's ids."""

    def __init__(self, act: Callable[[list[int]], None], *, per_request: bool = False) -> None:
        self.act = act
        self.per_request = per_request
        self.runs: list[list[int]] = []

    async def run(self, inputs: Tensors) -> Tensors:
        ids = list(dict.fromkeys(int(v) for v in inputs["x"].reshape(-1)))  # flat when ragged
        self.runs.append(ids)
        self.act(ids)
        if self.per_request:
            return {"y": np.array(ids, np.float32) * 2}
        return {"y": inputs["x"] * 2}


def refusing(culprit: int) -> Callable[[list[int]], None]:
    def act(ids: list[int]) -> None:
        if culprit in ids:
            raise Refused(f"{culprit} refused")

    return act


def batch_of(rows: list[int], hard: dict[int, float] | None = None) -> list[Request]:
    """Requests 1, 2, ...: request k of rows[k - 1] rows, each holding k."""
    hard = hard or {}
    return [request(x(n, float(k)), n, k, hard=hard.get(k)) for k, n in enumerate(rows, 1)]


def assert_answered(p: Request, rid: int, rows: int) -> None:
    assert p.handle.future.result()["y"].tolist() == [[2.0 * rid] * 2] * rows


def error_of(p: Request) -> BaseException:
    err = p.handle.future.exception()
    assert err is not None
    return err


def sizes(stats: ModelStats) -> dict[int, int]:
    """Runs counted per batch size (rows)."""
    return {rows: d.compute_infer.count for rows, d in stats.batch_stats.items()}


async def test_halves_answer_each_request_its_own_rows_and_the_culprit_its_refusal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, stats = Clock(10.0), ModelStats()
    run, flights = runner(clock, stats)
    rows = [1, 2, 1, 1, 2, 1]
    batch = batch_of(rows)
    traced = request(x(2, 2.0), 2, 2, trace=True)  # request 2, traced: its run's record
    batch[1] = traced
    be = Script(refusing(5))
    with caplog.at_level(logging.WARNING, logger="batcher"):
        await run.run(Instance(0, be), take(flights, batch))
    assert be.runs == [[1, 2, 3, 4, 5, 6], [1, 2, 3], [4, 5, 6], [4], [5, 6], [5], [6]]
    for rid in (1, 2, 3, 4, 6):
        assert_answered(batch[rid - 1], rid, rows[rid - 1])
    err = error_of(batch[4])
    assert type(err) is Refused and str(err) == "5 refused"
    # The answered runs only: [1, 2, 3] of 4 rows, [4] and [6] of 1; the refused ones are not counted.
    assert stats.execution_count == 3 and sizes(stats) == {4: 1, 1: 2}
    assert stats.inference_count == 6 and stats.expired == 0 and stats.late == 0
    assert traced.handle.trace is not None and traced.handle.trace.run is not None
    assert (traced.handle.trace.run.rows, traced.handle.trace.run.requests) == (4, 3)
    assert [r.getMessage() for r in caplog.records] == [HALVES % 6]
    assert flights.count == 0


async def test_a_request_gone_or_expired_during_the_refused_run_is_not_run_again_the_rest_is() -> None:
    clock, stats = Clock(10.0), ModelStats()
    run, flights = runner(clock, stats)
    batch = batch_of([1, 1, 1, 1], hard={3: 15.0})

    def act(ids: list[int]) -> None:
        if ids == [1, 2, 3, 4]:  # the refused run outlasts request 3's deadline; 1's caller goes
            clock.now = 20.0
            batch[0].handle.future.cancel()
        refusing(3)(ids)

    be = Script(act)
    await run.run(Instance(0, be), take(flights, batch))
    assert be.runs == [[1, 2, 3, 4], [2], [4]]  # 2 after 1 (gone) in its half; 4 after 3 (expired)
    assert batch[0].handle.future.cancelled()
    assert_answered(batch[1], 2, 1)
    assert_answered(batch[3], 4, 1)
    with pytest.raises(DeadlineExceeded, match=r"^deadline exceeded while its batch was run again$"):
        batch[2].handle.future.result()
    assert stats.expired == 1 and stats.execution_count == 2 and stats.inference_count == 2


@pytest.mark.parametrize(("hard", "expired"), [(10.5, 1), (30.0, 0)], ids=["at-its-deadline", "early"])
async def test_a_caller_gone_at_its_deadline_during_the_refused_run_counts_expired(
    hard: float, expired: int
) -> None:
    """Its caller cancels at 10.0 during the refused run: with a deadline of 10.5 and a 1 s margin its
    copy of the deadline may have passed, an expiry (as at boarding and for a run never started); with
    30.0 it left of its own accord. It had been counted nowhere."""
    clock, stats = Clock(10.0), ModelStats()
    run, flights = runner(clock, stats, margin=WakeMargin(fixed_s=1.0))
    batch = batch_of([1, 1, 1, 1], hard={1: hard})

    def act(ids: list[int]) -> None:
        if ids == [1, 2, 3, 4]:
            batch[0].handle.future.cancel()
        refusing(3)(ids)

    be = Script(act)
    await run.run(Instance(0, be), take(flights, batch))
    assert be.runs == [[1, 2, 3, 4], [2], [3, 4], [3], [4]]
    assert_answered(batch[1], 2, 1)
    assert type(error_of(batch[2])) is Refused
    assert_answered(batch[3], 4, 1)
    assert (stats.expired, stats.late) == (expired, 0)


async def test_callers_gone_at_their_deadlines_add_to_the_expired_already_counted() -> None:
    """Two callers gone at their deadlines during the refused run, on top of 3 expiries counted
    before: 5 (each is added, neither replaces the count)."""
    clock, stats = Clock(10.0), ModelStats()
    stats.expired = 3
    run, flights = runner(clock, stats, margin=WakeMargin(fixed_s=1.0))
    batch = batch_of([1, 1, 1, 1], hard={1: 10.5, 2: 10.5})

    def act(ids: list[int]) -> None:
        if ids == [1, 2, 3, 4]:
            batch[0].handle.future.cancel()
            batch[1].handle.future.cancel()
        refusing(3)(ids)

    be = Script(act)
    await run.run(Instance(0, be), take(flights, batch))
    assert be.runs == [[1, 2, 3, 4], [3, 4], [3], [4]]  # the first half: both gone
    assert type(error_of(batch[2])) is Refused
    assert_answered(batch[3], 4, 1)
    assert (stats.expired, stats.late) == (5, 0)


async def test_a_half_that_expired_waiting_for_a_thread_is_expired_and_the_next_half_still_runs() -> None:
    clock, stats = Clock(10.0), ModelStats()
    run, flights = runner(clock, stats)
    batch = batch_of([1, 1, 1, 1])

    def act(ids: list[int]) -> None:
        if ids == [2]:  # as the executor thread's check raises it (watchdog._unless_expired)
            raise ExpiredUnrun
        refusing(1)(ids)

    be = Script(act)
    await run.run(Instance(0, be), take(flights, batch))
    assert be.runs == [[1, 2, 3, 4], [1, 2], [1], [2], [3, 4]]
    assert type(error_of(batch[0])) is Refused
    err = error_of(batch[1])
    assert type(err) is DeadlineExceeded
    assert str(err) == "deadline exceeded while its batch waited for a thread of its instance"
    assert_answered(batch[2], 3, 1)
    assert_answered(batch[3], 4, 1)
    assert stats.expired == 1 and stats.execution_count == 1 and sizes(stats) == {2: 1}


async def test_a_half_failing_otherwise_fails_what_is_left_and_replaces_the_instance(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """[3] times out after 2 was refused alone: 3 and the half not run yet ([4, 5, 6]) get the
    timeout; the instance gets a fresh backend."""
    clock, stats = Clock(10.0), ModelStats()
    policy = BatchingPolicy(max_batch_size=8)
    estimator = ServiceTimeEstimator()
    timed_out = RunTimedOut("stuck")
    fresh = Script(lambda ids: None)
    replaced: list[Backend] = []

    async def replace(old: Backend) -> Backend:
        replaced.append(old)
        return fresh

    watchdog = Watchdog(0.0, replace, "m")
    trips: list[None] = []
    flights = Flights(lambda: 0)
    forecast = WaitForecast(estimator, RequestQueue(policy, clock), policy, 1, clock)
    run = BatchRunner(
        policy, stats, clock, estimator, forecast, watchdog, flights,
        lambda rows, nbytes: False, lambda: trips.append(None), name="m",
    )  # fmt: skip

    def act(ids: list[int]) -> None:
        if ids == [3]:
            raise timed_out
        refusing(2)(ids)

    be = Script(act)
    instance = Instance(0, be)
    batch = batch_of([1, 1, 1, 2, 1, 1])
    with caplog.at_level(logging.WARNING, logger="batcher"):
        await run.run(instance, take(flights, batch))
    assert be.runs == [[1, 2, 3, 4, 5, 6], [1, 2, 3], [1], [2, 3], [2], [3]]
    assert_answered(batch[0], 1, 1)
    assert type(error_of(batch[1])) is Refused
    assert all(error_of(p) is timed_out for p in batch[2:])
    assert trips == [None] and replaced == [be] and instance.backend is fresh
    assert watchdog.timeouts == 1 and watchdog.replaced == 1
    assert [r.getMessage() for r in caplog.records] == [
        HALVES % 6,
        "m: instance 0 ran a batch of 5 rows (4 requests) past run_timeout_s (0 s); its requests fail, "
        "the stuck run is abandoned and the instance replaced (timeout 1 of this model)",
    ]
    assert stats.execution_count == 1 and stats.inference_count == 1 and flights.count == 0


async def test_a_half_whose_outputs_cannot_be_split_says_which_rows_in_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, stats = Clock(10.0), ModelStats()
    policy = BatchingPolicy(max_batch_size=8, ragged=RaggedPlan(inputs=frozenset({"x"})))
    run, flights = runner(clock, stats, policy)
    batch = batch_of([1, 2, 1, 1])
    be = Script(refusing(4), per_request=True)  # one row per request, not per row
    with caplog.at_level(logging.WARNING, logger="batcher"):
        await run.run(Instance(0, be), take(flights, batch))
    assert be.runs == [[1, 2, 3, 4], [1, 2], [3, 4], [3], [4]]
    assert batch[0].handle.future.result()["y"].tolist() == [2.0]
    failed = error_of(batch[1])
    assert type(failed) is OutputNotSplit
    assert batch[2].handle.future.result()["y"].tolist() == [6.0]
    assert type(error_of(batch[3])) is Refused
    assert [r.getMessage() for r in caplog.records] == [
        HALVES % 4,
        f"m: 1 of 2 requests of a run of 3 rows (rows [1, 2]) not answered: {failed} "
        "(output shapes {'y': (2,)})",
    ]
    assert sizes(stats) == {3: 1, 1: 1} and stats.inference_count == 2


async def test_a_half_ended_past_a_deadline_or_its_callers_margin_counts_late() -> None:
    """[1]'s caller goes during its run, 0.5 s before the server's deadline but within the 1 s
    margin: late. [2]'s run ends past its deadline: computed late, not answered."""
    clock, stats = Clock(10.0), ModelStats()
    run, flights = runner(clock, stats, margin=WakeMargin(fixed_s=1.0))
    batch = batch_of([1, 1, 1], hard={1: 10.5, 2: 10.8})

    def act(ids: list[int]) -> None:
        if ids == [1]:
            batch[0].handle.future.cancel()
        if ids == [2]:
            clock.now = 11.0
        refusing(3)(ids)

    be = Script(act)
    await run.run(Instance(0, be), take(flights, batch))
    assert be.runs == [[1, 2, 3], [1], [2, 3], [2], [3]]
    assert batch[0].handle.future.cancelled()
    err = error_of(batch[1])
    assert type(err) is ComputedLate and str(err) == "deadline exceeded while the request was being computed"
    assert type(error_of(batch[2])) is Refused
    assert stats.late == 2 and stats.expired == 0
    assert stats.execution_count == 2 and stats.inference_count == 0
