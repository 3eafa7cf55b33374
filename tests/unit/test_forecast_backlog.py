"""Shedding forecasts a backlog in the batches formation will form from it, not in recent runs' size.

A tester's report (identity model, 100 ms a batch, max_batch_size 4): after 5 single requests, a
burst of 24 with a 350 ms deadline had 19 refused ("overloaded: about 40x ms"), again on a second
burst, where the same 24 without a deadline had 9 answered within 350 ms. The forecast cut the
queue into batches of the recent runs' average size (~2 rows after single requests); shedding kept
batches small, which kept that average small. Fake clocks and stand-in costs throughout.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from batcher import BatchingPolicy, DynamicBatcher, ModelStats, Overloaded, Tensors
from batcher.estimate import ServiceTimeEstimator
from batcher.forecast import Costs, backlog
from batcher.form import backlog_rows
from batcher.hop import CAP_S as CAP  # the margin after a batch run off the event loop
from tests.support.batcher_fakes import Clock, Gated, turns_until

NOW = 100.0
LONG = 5.0  # an upper bound no healthy wait comes near


def per_batch(run_s: float, max_batch_size: int = 4, cut_by_rows: bool = False, hop_s: float = 0.0) -> Costs:
    """A model whose run costs `run_s` whatever its rows; formation's figure for a batch is that, or
    (`cut_by_rows`, sizes it has not seen) `run_s` a row."""
    policy = BatchingPolicy(max_batch_size=max_batch_size)
    return Costs(
        lambda n: backlog_rows(n, policy),
        lambda n: run_s,
        lambda n, ran: run_s * n if cut_by_rows else run_s,
        hop_s,
    )


def estimated(est: ServiceTimeEstimator, max_batch_size: int = 4, hop_s: float = 0.005) -> Costs:
    """The figures WaitForecast reads from an estimator (with the batcher's 5 ms hop)."""
    policy = BatchingPolicy(max_batch_size=max_batch_size)
    return Costs(
        lambda n: backlog_rows(n, policy),
        lambda n: est.predict_seen(n, NOW),
        lambda n, ran: est.predict(n, NOW) if ran is None else est.predict_after(n, NOW, *ran),
        hop_s,
    )


def admitted(costs: Costs, slack_s: float, running_s: float, instances: int = 1) -> int:
    """How many of a burst, all with `slack_s` to their deadline, admission lets in: the first runs
    at once (`running_s` left of it), the next ones queue while `backlog` says they end in time."""
    queued = 0
    while True:
        free = sorted([running_s] + [0.0] * (instances - 1))
        if backlog(queued + 1, free, costs, slack_s, slack_s) > slack_s:
            return 1 + queued
        queued += 1


# -- the sizes formation forms from a backlog -----------------------------------------------------


@pytest.mark.parametrize(
    ("max_batch_size", "preferred", "queued", "rows"),
    [
        (4, (), 24, 4),  # max_batch_size
        (4, (), 3, 3),  # all there is
        (8, (2, 4), 10, 4),  # the largest preferred size
        (8, (2, 4), 3, 2),  # the largest preferred size it holds
        (8, (3,), 2, 2),  # none it holds: all of it
        (0, (), 5, 1),  # no batch dimension: one request a run
    ],
)
def test_the_batch_a_backlog_starts_with(
    max_batch_size: int, preferred: tuple[int, ...], queued: int, rows: int
) -> None:
    policy = BatchingPolicy(max_batch_size=max_batch_size, preferred_batch_sizes=preferred)
    assert backlog_rows(queued, policy) == rows


# -- backlog: the tester's burst, and what formation would cut --------------------------------------


def test_a_burst_is_admitted_as_far_as_full_batches_end_in_time() -> None:
    # 100 ms a batch of up to 4: the first runs (100 ms), then 2 batches of 4 end at 300 ms; a 10th
    # would wait for a third batch, ending at 400 ms.
    assert admitted(per_batch(0.1), slack_s=0.35, running_s=0.1) == 9
    # Two instances, one free: 5 batches of 4 end by 300 ms, 2 on the one running, 3 on the other.
    assert admitted(per_batch(0.1), slack_s=0.35, running_s=0.1, instances=2) == 21
    assert backlog(8, [0.1], per_batch(0.1, hop_s=0.005), 0.35) == pytest.approx(0.31)  # hops counted


def test_the_estimators_figures_after_single_runs_and_after_batches_of_four() -> None:
    est = ServiceTimeEstimator()
    for _ in range(5):
        est.observe(1, 0.1, NOW)
    # Only 1-row runs seen: formation sizes 2..4 rows by rows (200..400 ms), so from 245 ms left it
    # runs 2 rows; once those have run in 100 ms, 2 rows by their figure again (3 by theirs, 150 ms,
    # would end late). The forecast follows it: 1 + 2 + 2 in time.
    assert admitted(estimated(est), slack_s=0.35, running_s=0.105) == 5
    for rows in (4, 4, 4):
        est.observe(rows, 0.1, NOW)
    assert admitted(estimated(est), slack_s=0.35, running_s=0.105) == 9


def test_formations_cut_to_the_oldest_deadline_makes_the_first_batches_smaller() -> None:
    # Formation's figure is by rows (sizes unseen): a batch must end before its oldest request's
    # deadline. All 8 rows due in 1 s: two batches of 4 (0.4 s each by rows, 0.1 s in fact).
    costs = per_batch(0.1, cut_by_rows=True)
    assert backlog(8, [0.0], costs, 1.0) == pytest.approx(0.2)
    # The oldest due in 250 ms (deadlines spread up to the last's 1 s): 2 rows, then 3, then 3.
    assert backlog(8, [0.0], per_batch(0.1, cut_by_rows=True), 1.0, 0.25) == pytest.approx(0.3)


def test_without_a_deadline_the_backlog_is_full_batches() -> None:
    assert backlog(9, [0.0], per_batch(0.1, cut_by_rows=True), None) == pytest.approx(0.3)
    assert backlog(0, [0.1, 0.2], per_batch(0.1), None) == pytest.approx(0.2)  # the running ones' end


def reference(
    rows: int, free: list[float], costs: Costs, slack_s: float | None, first_s: float | None
) -> float:
    """`backlog` one batch at a time (no rounds taken at once), for a cut that does not learn."""
    left, done, first = rows, 0, slack_s if first_s is None else first_s
    spread = 0.0 if slack_s is None or first is None else (slack_s - first) / max(1, rows - 1)
    while True:
        start = min(free)
        n = costs.size(left)
        if slack_s is not None and start < slack_s:
            due = first + spread * done
            n = next((k for k in range(1, n) if start + costs.cut_s(k + 1, None) > due), n)
        run = costs.run_s(n) + costs.hop_s
        if left <= n:
            return start + run
        free[free.index(start)] = start + run
        left, done = left - n, done + n


@pytest.mark.parametrize("instances", [1, 2, 3])
@pytest.mark.parametrize("slack_s", [None, 0.25, 0.5, 2.0])
@pytest.mark.parametrize("first_s", [None, 0.05, 0.2])
def test_rounds_taken_at_once_end_where_one_batch_at_a_time_would(
    instances: int, slack_s: float | None, first_s: float | None
) -> None:
    costs = per_batch(0.1, hop_s=0.005)
    for rows in range(1, 40):
        for lead in (0.0, 0.03, 0.12):
            free = [lead * i for i in range(instances)]
            first = None if slack_s is None or first_s is None else min(first_s, slack_s)
            got = backlog(rows, list(free), costs, slack_s, first)
            assert got == pytest.approx(reference(rows, list(free), costs, slack_s, first)), (rows, lead)


def test_a_long_queue_costs_rounds_not_batches() -> None:
    calls = [0]

    def size(n: int) -> int:
        calls[0] += 1
        return min(n, 4)

    costs = Costs(size, lambda n: 0.01, lambda n, ran: 0.01, 0.0)
    assert backlog(4000, [0.0], costs, 100.0) == pytest.approx(10.0)
    assert calls[0] < 10


# -- the batcher: the tester's burst, with a fake clock ---------------------------------------------


def x(i: float) -> Tensors:
    return {"x": np.full((1, 1), i, np.float32)}


async def test_after_single_requests_a_burst_that_fits_is_admitted_and_no_more() -> None:
    """10 s a batch of up to 4 (every size seen), 5 single runs first (recent runs: 1 row), then a
    burst with 35 s left: the first runs at once, 8 more fit in 2 batches of 4 (they had been cut in
    batches of 2: the 5th was refused), the 10th is shed."""
    clock, be = Clock(NOW), Gated(gate_open=True)
    b = DynamicBatcher([be], BatchingPolicy(max_batch_size=4), ModelStats(), clock)
    b.start()
    try:
        for i in range(5):
            await asyncio.wait_for(b.submit(x(i), 1), LONG)
        for _ in range(16):  # their real times replaced: runs of 1 and of 4 rows take 10 s
            b.estimator.observe(1, 10.0, NOW)
        for _ in range(3):
            b.estimator.observe(4, 10.0, NOW)
        be.gate.clear()
        be.runs.clear()
        burst = [asyncio.ensure_future(b.submit(x(10), 1, deadline=NOW + 35.0))]
        await turns_until(lambda: be.runs == [1])
        for i in range(1, 9):
            burst.append(asyncio.ensure_future(b.submit(x(10 + i), 1, deadline=NOW + 35.0)))
            await turns_until(lambda queued=i: b.queued_requests == queued)  # admitted, not refused
        with pytest.raises(Overloaded):
            await asyncio.wait_for(b.submit(x(20), 1, deadline=NOW + 35.0), LONG)
        be.gate.set()
        for task in burst:
            await asyncio.wait_for(task, LONG)
        assert be.runs == [1, 4, 4]
    finally:
        be.gate.set()
        await b.stop(drain=False, timeout_s=0.1)


# -- WaitForecast: figures as last seen ----------------------------------


async def test_the_forecast_reads_run_times_as_last_seen_not_faded() -> None:
    """4-row runs last seen ~1 s before a burst, faded ~10%, had let 12 of 121 in past what fit."""
    clock = Clock(NOW)
    b = DynamicBatcher([Gated()], BatchingPolicy(max_batch_size=4), ModelStats(), clock)
    for _ in range(3):
        b.estimator.observe(4, 1.0, NOW)
    assert b._forecast.finish(1, 8) == pytest.approx(2 * (1.0 + CAP))  # 2 batches, each with the hop
    clock.now = NOW + 5.0  # a half-life later
    assert b._forecast.finish(1, 8) == pytest.approx(2 * (1.0 + CAP))
    assert b.estimator.predict_seen(4, clock.now) == pytest.approx(0.5)  # faded for the rest
    for _ in range(16):  # figures kept between forecasts are read again once a run is observed
        b.estimator.observe(4, 3.0, clock.now)
    assert b._forecast.finish(1, 8) == pytest.approx(2 * (3.0 + CAP))


# -- WaitForecast: rows pledged by ensemble requests admitted whole -------------------------------


async def test_rows_pledged_by_ensembles_are_forecast_in_the_batches_formation_forms() -> None:
    """A step model (10 s a batch of up to 4, every size seen; recent runs of 1 row) with 7 rows
    pledged by admitted ensemble requests (server/models/ensemble_admission.py): a request is
    forecast behind them in 2 batches of 4, its own row the 8th (about 20 s), not in batches of
    recent runs' size (4 of 2 rows, 40 s: refused with 25 s left); nothing queued and the instance
    free do not make it one that runs at once while rows are pledged ahead of it."""
    clock, be = Clock(NOW), Gated(gate_open=True)
    b = DynamicBatcher([be], BatchingPolicy(max_batch_size=4), ModelStats(), clock)
    b.start()
    try:
        for i in range(5):
            await asyncio.wait_for(b.submit(x(i), 1), LONG)
        for _ in range(16):  # their real times replaced: runs of 1 and of 4 rows take 10 s
            b.estimator.observe(1, 10.0, NOW)
        for _ in range(3):
            b.estimator.observe(4, 10.0, NOW)
        level = b.admission(1).priority
        b.forecast.pledge(7, level)
        assert b.forecast.shed_s(level, 1, 25.0) == pytest.approx(2 * (10.0 + CAP))  # each with the hop
        with pytest.raises(Overloaded):
            await asyncio.wait_for(b.submit(x(10), 1, deadline=NOW + 19.0), LONG)
        await asyncio.wait_for(b.submit(x(11), 1, deadline=NOW + 25.0), LONG)  # admitted, and run
        b.forecast.unpledge(7, level)
        assert b.forecast.shed_s(level, 1, 25.0) == b.forecast.now(1)  # at once: its run alone
    finally:
        await b.stop(drain=False, timeout_s=0.1)


# -- the asker's own request is never split --------------------------------------------------------


@pytest.mark.parametrize("rows", [5, 8])
def test_the_askers_request_runs_whole_where_preferred_sizes_are_smaller(rows: int) -> None:
    """A tester's report (identity model, 50 ms a batch, max_batch_size 8, preferred [2, 4]): a
    request of 8 (or 5) rows behind a running batch, 150 ms to its deadline, was forecast in
    preferred-size pieces, 3 runs ("about 271 ms"), and refused 9 of 10 on an idle server; it runs
    whole, in one batch (~100 ms)."""
    policy = BatchingPolicy(max_batch_size=8, preferred_batch_sizes=(2, 4))
    costs = Costs(lambda n: backlog_rows(n, policy), lambda n: 0.05, lambda n, ran: 0.05, 0.005)
    finish = backlog(rows, [0.045], costs, 0.15, 0.15, last=rows)
    assert finish == pytest.approx(0.045 + 0.055)  # the running batch, then one run of all its rows
    # Rows of other requests ahead of it run first, it whole after them: two runs, never its rows
    # cut into a third.
    assert backlog(3 + rows, [0.0], costs, None, None, last=rows) == pytest.approx(2 * 0.055)


def test_rows_formation_drops_unrun_take_no_time() -> None:
    """A reviewer's case: a 100 ms model batching 4, 40 rows queued, the running batch ending in
    80 ms, the asker 3 s from its deadline, the oldest queued row 150 ms from its own. That row
    cannot run in time: formation drops it unrun. Charged a 1-row run, with the rows after it
    each due a little later kept at 1-row batches, the backlog was forecast at ~3.3 s and the asker
    refused, where with the oldest's deadline far it is ~1.1 s."""
    policy = BatchingPolicy(max_batch_size=4)
    base = (lambda n: backlog_rows(n, policy), lambda n: 0.1, lambda n, ran: 0.1, 0.005)
    with_floor = Costs(*base, floor_s=lambda n: 0.1)
    without = Costs(*base)
    far = backlog(40, [0.08], with_floor, 3.0, 1.0)
    assert far < 1.5
    assert backlog(40, [0.08], with_floor, 3.0, 0.15) <= far + 0.2  # the dropped row costs nothing
    assert backlog(40, [0.08], without, 3.0, 0.15) > 3.0  # as it had been: refused
    # The asker's own rows are never taken as dropped: past hope, it is told so, not admitted.
    assert backlog(1, [0.08], with_floor, 0.1, 0.1) > 0.1


def test_a_row_formation_may_still_run_is_charged_not_counted_on_to_be_dropped() -> None:
    """1-row batches: cautious run 200 ms, floor 100 ms; rows due at 150 and 280 ms, the asker at
    410 ms. On the cautious clock the first ends at 200 ms and the second is past hope (200 + 100 >
    280): counted dropped, the asker was forecast at 400 ms and admitted. Runs of 150 ms (between
    the two figures) run the second (150 + 100 <= 280, to 300 ms) and the asker ends at 450 ms,
    late: under steady overload a third of the requests admitted so were dropped unrun at ~90% of
    their deadline (a tester, session 53). Past hope only behind the first row's batch, the second
    is charged, and the asker is told 600 ms and refused at once."""
    policy = BatchingPolicy(max_batch_size=1)
    costs = Costs(lambda n: backlog_rows(n, policy), lambda n: 0.2, lambda n, ran: 0.2, 0.0, lambda n: 0.1)
    assert backlog(3, [0.0], costs, 0.41, 0.15) == pytest.approx(0.6)
    # Past hope at the front (due at 90 ms: 0 + 100 > 90): dropped, taking no time.
    assert backlog(3, [0.0], costs, 0.41, 0.09) == pytest.approx(0.4)


def test_without_a_floor_no_row_is_taken_as_dropped() -> None:
    """No floor known (an unknown cost): formation's give-up rule has nothing to read, so a row
    already due before the instance is free is still charged its run."""
    policy = BatchingPolicy(max_batch_size=1)
    costs = Costs(lambda n: backlog_rows(n, policy), lambda n: 0.1, lambda n, ran: 0.1, 0.0)
    assert backlog(2, [0.2], costs, 1.0, 0.1) == pytest.approx(0.4)
