"""Shedding forecasts batches as full as formation packs them, not as full as rows alone would make them.

A tester's report (session 53: identity model, 100 ms a batch, max_batch_size 4, every request 3
rows, 2x overload with 1 s deadlines): 12 of 80 admitted requests were dropped unrun at ~91% of
their deadline. Formation never splits a request, so each batch held one 3-row request (3 + 3 > 4);
the forecast took the rows ahead 4 a batch, 15 batches where formation ran 20, and admitted a third
more than could be served. Fake clocks and stand-in costs throughout.
"""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from batcher import BatchingPolicy, DynamicBatcher, ModelStats, Tensors
from batcher.arrival_rates import ArrivalRates
from batcher.forecast import Costs, backlog
from batcher.form import backlog_rows
from batcher.hop import CAP_S as CAP  # the margin after a batch run off the event loop
from tests.support.batcher_fakes import Clock, Gated, turns_until

NOW = 100.0
LONG = 5.0  # an upper bound no healthy wait comes near


def per_batch(run_s: float, policy: BatchingPolicy, hop_s: float = 0.0) -> Costs:
    """A model whose run costs `run_s` whatever its rows."""
    return Costs(lambda n: backlog_rows(n, policy), lambda n: run_s, lambda n, ran: run_s, hop_s)


def rows3(i: float) -> Tensors:
    return {"x": np.full((3, 1), i, np.float32)}


def test_batches_before_the_askers_hold_the_packed_share_of_their_size() -> None:
    """15 requests of 3 rows ahead, the asker's 3 rows last, 100 ms a batch of up to 4: as rows
    alone, 12 batches (1.2 s); packed 3 of 4, 15 batches and the asker's (1.6 s)."""
    costs = per_batch(0.1, BatchingPolicy(max_batch_size=4))
    assert backlog(48, [0.0], costs, None, None, last=3) == pytest.approx(1.2)
    assert backlog(48, [0.0], costs, None, None, last=3, packed=0.75) == pytest.approx(1.6)
    # Nearly full stays full (3.6 rounds to 4); never less than a row a batch.
    assert backlog(48, [0.0], costs, None, None, last=3, packed=0.9) == pytest.approx(1.2)
    assert backlog(5, [0.0], costs, None, None, last=1, packed=0.01) == pytest.approx(0.5)


def test_the_askers_own_batch_is_not_packed() -> None:
    """Nothing ahead: the asker's rows are one batch, however full recent batches were."""
    costs = per_batch(0.1, BatchingPolicy(max_batch_size=4))
    assert backlog(3, [0.0], costs, None, None, last=3, packed=0.5) == pytest.approx(0.1)
    # Nor the last batch, all that is left: 2 rows ahead and the asker's one run together.
    assert backlog(3, [0.0], costs, None, None, last=1, packed=0.75) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("preferred", "rows", "behind", "full"),
    [
        ((), 3, 6, False),  # 3 of 4: a 3-row request behind could not join
        ((), 4, 6, True),
        ((), 3, 0, True),  # all there was
        ((2, 4), 2, 1, True),  # a preferred size below what is queued: the cut formation makes
        ((2, 4), 3, 3, False),  # 3 where the largest preferred size, 4, was there to fill
    ],
)
def test_what_a_batch_cut_at_its_size_says_of_packing(
    preferred: tuple[int, ...], rows: int, behind: int, full: bool
) -> None:
    """Each batch cut at its size moves the forecast's packing by a fifth towards how full it was."""
    policy = BatchingPolicy(max_batch_size=8 if preferred else 4, preferred_batch_sizes=preferred)
    b = DynamicBatcher([Gated()], policy, ModelStats(), Clock(NOW))
    for _ in range(3):
        b.estimator.observe(4, 0.1, NOW)
    level = b.admission(1).priority
    b.forecast.pledge(16, level)
    before = b.forecast.finish(level, 1)
    for _ in range(20):
        b.forecast.packed(rows, behind)
    after = b.forecast.finish(level, 1)
    assert after == pytest.approx(before) if full else after > before + 0.1


async def test_batches_of_several_row_requests_teach_the_forecast_how_full_they_run() -> None:
    """10 s a batch of up to 4, requests of 3 rows: once formation has cut batches of one request
    each, a 3-row request behind three more (9 rows ahead, pledged) is forecast at 4 runs (each with
    the hop margin, held at 5 ms: the clock moves 20 s), where before those batches it was 3 (its
    12 rows as batches of 4)."""
    clock, be = Clock(NOW), Gated()
    b = DynamicBatcher([be], BatchingPolicy(max_batch_size=4), ModelStats(), clock)
    b.hop.floor_s = CAP
    b.start()
    try:
        level = b.admission(3).priority
        for _ in range(3):
            b.estimator.observe(4, 10.0, NOW)
        b.forecast.pledge(9, level)
        assert b.forecast.finish(level, 3) == pytest.approx(3 * (10.0 + CAP))  # packed full: 12 rows, 3 runs
        b.forecast.unpledge(9, level)
        first = [asyncio.ensure_future(b.submit(rows3(0), 3))]
        await turns_until(lambda: be.runs == [3])
        for i in range(1, 9):
            first.append(asyncio.ensure_future(b.submit(rows3(i), 3)))
        await turns_until(lambda: b.queued_requests == 8)
        be.gate.set()
        for task in first:
            await asyncio.wait_for(task, LONG)
        assert be.runs == [3] * 9  # one request a batch: 7 of them cut with more queued behind
        for n in (3, 4):  # their real times (the fake clock stood still) replaced: 10 s a run
            for _ in range(16):
                b.estimator.observe(n, 10.0, NOW)
        be.gate.clear()
        b.forecast.pledge(9, level)
        assert b.forecast.finish(level, 3) == pytest.approx(4 * (10.0 + CAP))
        # Past two runs of a full batch without a cut at size, the figure fades back to full (a
        # tester, session 54: after a phase of 3-row requests, a burst of 1-row ones was refused as
        # batches of 3); within them it stands (a steady overload cuts about one a run).
        clock.now += 19.9
        assert b.forecast.finish(level, 3) == pytest.approx(4 * (10.0 + CAP))
        clock.now += 0.6  # half a second past them: the shortfall down to about a third
        assert b.forecast.finish(level, 3) == pytest.approx(3 * (10.0 + CAP))
    finally:
        be.gate.set()
        await b.stop(drain=False, timeout_s=0.1)


# -- rows of higher priority levels arriving while a lower level waits -----------------------------


def test_arrival_rates_count_rows_a_second_per_level_and_fade() -> None:
    rates = ArrivalRates(tau_s=1.0)
    t = 0.0
    while t < 5.0:  # a row every 50 ms at level 1, three rows every 100 ms at level 3
        rates.arrived(1, 1, t)
        if round(t * 20) % 2 == 0:
            rates.arrived(3, 3, t)
        t += 0.05
    assert rates.before(1, t) == 0.0  # nothing is served before level 1
    assert rates.before(2, t) == pytest.approx(20.0, rel=0.1)
    assert rates.before(4, t) == pytest.approx(50.0, rel=0.1)
    assert rates.expected(2, t, 2.0) == pytest.approx(2 * rates.before(2, t))  # over the whole wait
    faded = rates.before(2, t) * math.exp(-0.1)
    assert rates.before(2, t + 0.1) == pytest.approx(faded)  # 150 ms since its last row: faded
    # Silent for a second (after rows 50 ms apart): at most 3 rows over that second, not 20 * e^-1.
    last = t - 0.05
    assert rates.before(2, last + 1.0) == pytest.approx(3.0)


def test_one_request_is_no_stream() -> None:
    """A level's latest request is left out of what it is expected to send: one priority-1 request
    among priority-2 ones with long deadlines had had one refused on rows that never came."""
    rates = ArrivalRates(tau_s=1.0)
    rates.arrived(1, 4, 0.0)
    assert rates.before(2, 0.0) == 0.0
    rates.arrived(1, 1, 0.5)  # a second: the first, faded, is what the level is expected to send
    assert rates.before(2, 0.5) == pytest.approx(4 * math.exp(-0.5))


def test_a_burst_is_no_stream() -> None:
    """Requests within 10 ms of their instant's first are one instant, left out of what the level is
    expected to send (they are queued, and counted there): after 20 priority-1 requests sent at once,
    14 of 18 priority-2 requests with 1 s deadlines had been refused that were then answered in
    0.4-0.6 s (this session)."""
    rates = ArrivalRates(tau_s=1.0)
    for i in range(20):
        rates.arrived(1, 1, i * 0.0005)
    assert rates.before(2, 0.01) == 0.0
    assert rates.before(2, 0.6) == 0.0


def test_a_level_silent_for_several_gaps_has_slowed() -> None:
    """A tester's report (session 54): 20 priority-1 requests in two instants, answered in half a
    second; 0.6 s after them the fade alone still saw ~5 rows a second coming for another second."""
    rates = ArrivalRates(tau_s=1.0)
    for _ in range(10):
        rates.arrived(1, 1, 0.0)
    for _ in range(10):
        rates.arrived(1, 1, 0.05)
    assert rates.before(2, 0.05) == pytest.approx(10.0 * math.exp(-0.05))  # the first instant's
    assert rates.before(2, 0.6) == pytest.approx(3 / 0.55)  # at most 3 rows over its silence
    assert rates.expected(2, 0.6, 0.42) == pytest.approx(3 / 0.55 * 0.42)


def prioritised(clock: Clock, be: Gated | None = None) -> DynamicBatcher:
    """100 ms a batch of up to 4 (the hop margin besides, held at 5 ms: the rows arriving meanwhile
    are counted to a whole number of runs, which a smaller margin moves), two priority levels."""
    policy = BatchingPolicy(max_batch_size=4, priority_levels=2, default_priority=2)
    b = DynamicBatcher([be or Gated()], policy, ModelStats(), clock)
    b.hop.floor_s = 0.005
    for n in range(1, 5):
        for _ in range(3):
            b.estimator.observe(n, 0.1, NOW)
    return b


def test_a_lower_level_is_forecast_behind_the_higher_rows_that_arrive_meanwhile() -> None:
    """A tester's report (session 53): priority-1 work at a steady rate, priority-2 requests
    admitted on the queue as it was were dropped unrun at ~91% of their deadline (66-81% of them).
    12 rows queued ahead at level 2 (pledged here), priority-1 rows arriving at ~20 a second: a
    priority-2 asker waits 4 runs for them and its own row, and for the ~11 rows arriving before
    its batch runs: 6 runs. Priority-1 rows queued now are ahead of it besides: 8 of them, 10 runs."""
    clock = Clock(NOW - 10.0)
    b = prioritised(clock)
    while clock.now < NOW:
        b.forecast.arrived(1, 1)
        clock.now += 0.05
    b.forecast.pledge(12, 2)
    assert b.forecast.finish(1, 1) == pytest.approx(0.105)  # level 2's rows wait behind it
    assert b.forecast.finish(2, 1) == pytest.approx(6 * 0.105)
    b.forecast.pledge(8, 1)
    assert b.forecast.finish(2, 1) == pytest.approx(10 * 0.105)
    b.forecast.unpledge(8, 1)
    clock.now += 10.0  # the stream stopped: its rate faded away
    assert b.forecast.finish(2, 1) == pytest.approx(4 * 0.105)


def test_behind_higher_levels_that_alone_fill_the_model_a_lower_one_is_refused() -> None:
    """A tester's report (session 54): priority-1 rows at 50 a second on a model that runs ~38, a
    priority-2 request with 3 s left: its wait grows every time the rows arriving over it are
    counted. Worked three times, it had been forecast at ~0.5 s and admitted, then dropped unrun."""
    clock = Clock(NOW - 10.0)
    b = prioritised(clock)
    while clock.now < NOW:
        b.forecast.arrived(1, 1)
        clock.now += 0.02
    b.forecast.started(4, clock.now)  # the model busy with a batch of them
    assert b.forecast.finish(2, 1, 3.0) > 3.0
    assert b.forecast.finish(1, 1, 3.0) == pytest.approx(2 * 0.105)  # priority 1: that batch, its own


def test_one_level_keeps_no_rates() -> None:
    clock = Clock(NOW)
    b = DynamicBatcher([Gated()], BatchingPolicy(max_batch_size=4), ModelStats(), clock)
    for n in range(1, 5):
        for _ in range(3):
            b.estimator.observe(n, 0.1, NOW)
    for _ in range(100):
        b.forecast.arrived(1, 1)
    b.forecast.pledge(12, 1)
    assert b.forecast.finish(1, 1) == pytest.approx(4 * (0.1 + CAP))  # an async backend: off the loop


async def test_admitted_requests_count_in_their_levels_rate() -> None:
    """Each request the batcher queues counts at its level: priority-1 requests answered over a
    second, none queued now, still move a priority-2 asker's forecast (as in the test above)."""
    clock, be = Clock(NOW), Gated(gate_open=True)
    b = prioritised(clock, be)
    b.start()
    try:
        for i in range(20):
            await asyncio.wait_for(b.submit({"x": np.full((1, 1), i, np.float32)}, 1, priority=1), LONG)
            clock.now += 0.05
        for n in range(1, 5):  # their real times (the fake clock stood still in each) replaced
            for _ in range(16):
                b.estimator.observe(n, 0.1, clock.now)
        b.forecast.pledge(12, 2)
        assert b.queued_requests == 0
        # ~13 rows a second as seen so far (a second of them, faded over one): ~5 more rows, a run
        # more than the 4 without them.
        assert b.forecast.finish(2, 1) == pytest.approx(5 * 0.105)
    finally:
        await b.stop(drain=False, timeout_s=0.1)


# -- mutation survivors (tests/MUTANTS.md, fifty-fourth session) ----------------------------------


def test_rates_are_rows_a_second_whatever_the_time_constant() -> None:
    """Over half a second's fade: a row every 50 ms is still 20 rows a second, and fades by e every
    half second; a level's latest instant is left out at that scale too."""
    rates = ArrivalRates(tau_s=0.5)
    rates.arrived(1, 1, 0.0)  # its first request: no stream yet
    assert rates.before(2, 0.0) == 0.0
    rates.arrived(1, 1, 0.05)  # a second: the first, as a row over half a second, faded
    assert rates.before(2, 0.05) == pytest.approx(2.0 * math.exp(-0.1))
    t = 0.1
    while t < 5.0:
        rates.arrived(1, 1, t)
        t += 0.05
    now = t - 0.05
    assert rates.before(2, now) == pytest.approx(20.0, rel=0.1)
    assert rates.before(2, now + 0.1) == pytest.approx(rates.before(2, now) * math.exp(-0.2))
    stream = (rates.before(2, now) + 2.0) * math.exp(-0.2)  # with the row that was its latest
    rates.arrived(1, 40, now + 0.1)  # an instant of 40 rows: left out, the stream as it was
    assert rates.before(2, now + 0.1) == pytest.approx(stream)


def test_requests_10_ms_apart_are_one_instant() -> None:
    rates = ArrivalRates(tau_s=1.0)
    rates.arrived(1, 1, 0.0)
    rates.arrived(1, 1, 0.01)  # exactly 10 ms after the instant's first: the same instant
    assert rates.before(2, 0.01) == 0.0
    rates.arrived(1, 1, 0.0201)  # past it: a new instant, the first two now a stream's
    assert rates.before(2, 0.0201) == pytest.approx(2.0, rel=0.05)


def test_one_cut_moves_the_packing_a_fifth_of_the_way() -> None:
    """One batch of 3 where 4 fit: 0.95 full, still 4 a batch (3.8 rounds to 4), not 3."""
    b = DynamicBatcher([Gated()], BatchingPolicy(max_batch_size=4), ModelStats(), Clock(NOW))
    for _ in range(3):
        b.estimator.observe(4, 0.1, NOW)
    level = b.admission(1).priority
    b.forecast.pledge(16, level)
    full = b.forecast.finish(level, 1)
    b.forecast.packed(3, 6)
    assert b.forecast.finish(level, 1) == pytest.approx(full)
    for _ in range(10):
        b.forecast.packed(3, 6)
    assert b.forecast.finish(level, 1) > full + 0.1


async def test_batches_cut_at_a_preferred_size_teach_the_packing() -> None:
    """max_batch_size 8, preferred [4]: 3-row requests are cut one a batch ("preferred": 3 + 3 is
    past 4), and the forecast learns batches of 3 from those cuts too."""
    clock, be = Clock(NOW), Gated()
    policy = BatchingPolicy(max_batch_size=8, preferred_batch_sizes=(4,))
    b = DynamicBatcher([be], policy, ModelStats(), clock)
    b.start()
    try:
        level = b.admission(3).priority
        runs = [asyncio.ensure_future(b.submit(rows3(0), 3))]
        await turns_until(lambda: be.runs == [3])
        runs += [asyncio.ensure_future(b.submit(rows3(i), 3)) for i in range(1, 9)]
        await turns_until(lambda: b.queued_requests == 8)
        be.gate.set()
        for task in runs:
            await asyncio.wait_for(task, LONG)
        assert be.runs == [3] * 9
        for n in (3, 4):
            for _ in range(16):
                b.estimator.observe(n, 10.0, NOW)
        b.forecast.pledge(9, level)
        assert b.forecast.finish(level, 3) == pytest.approx(4 * (10.0 + CAP))  # as rows alone: 3 runs
    finally:
        be.gate.set()
        await b.stop(drain=False, timeout_s=0.1)


async def test_batches_cut_for_a_deadline_teach_the_packing_nothing() -> None:
    """A batch formation cuts short for a deadline in it (the next request would make it end too
    late) says nothing of how requests pack: only cuts at the batch's size count."""
    clock, be = Clock(NOW), Gated()
    b = DynamicBatcher([be], BatchingPolicy(max_batch_size=4), ModelStats(), clock)
    b.start()
    try:
        level = b.admission(1).priority
        x1 = {"x": np.zeros((1, 1), np.float32)}
        runs = [asyncio.ensure_future(b.submit(x1, 1))]
        await turns_until(lambda: be.runs == [1])
        # Admitted on no known cost (nothing is refused for it), then runs are learned to take a
        # second a row.
        runs += [asyncio.ensure_future(b.submit(x1, 1, deadline=NOW + 1.5)) for _ in range(6)]
        await turns_until(lambda: b.queued_requests == 6)
        for n in range(1, 5):
            for _ in range(16):
                b.estimator.observe(n, float(n), NOW)
        be.gate.set()
        for task in runs:
            await asyncio.wait_for(task, LONG)
        assert be.runs == [1] * 7  # each cut alone: two rows would end past 1.5 s
        for n in range(1, 5):  # their real times (the fake clock stood still) replaced
            for _ in range(16):
                b.estimator.observe(n, float(n), NOW)
        b.forecast.pledge(7, level)
        assert b.forecast.finish(level, 1) == pytest.approx(2 * (4.0 + CAP))  # batches of 4, not of 1
    finally:
        be.gate.set()
        await b.stop(drain=False, timeout_s=0.1)
