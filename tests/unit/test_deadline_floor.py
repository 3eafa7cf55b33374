""" "Cannot finish" rests on a real lower bound, and admission and the queue's give-up point agree.

A tester's reports (sixteenth session): (1) a lone 1-row request with 0.5-4.5 ms more slack than the
server's compute estimate was admitted, then failed ~1 ms later "while waiting in the queue" (15 of
15): admission checked the run alone, the queue's timer gives up a 5 ms hop margin earlier, so it
was armed in the past. (2) The message said more time was left than was needed (the margin was not
named). (3) The "proven lower bound" was a bucket's cautious figure (a 0.9 quantile, of 8-row runs
for a 5-row request): 5-row requests with a 960 ms timeout were refused "about 1053 ms of compute
needed" while a 5-row run took ~637 ms. Fake clocks and stand-in estimates throughout.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from batcher import BatchingPolicy, DeadlineExceeded, DynamicBatcher, ModelStats, Tensors
from batcher.admission import Admission
from batcher.estimate import ServiceTimeEstimator
from batcher.queue import RequestQueue
from tests.support.batcher_fakes import Clock, Gated
from tests.support.loop_timers import armed_about, armed_delay, loop_now

NOW = 100.0
HOP_S = 0.005
LONG = 5.0  # an upper bound no healthy wait comes near


def rows(n: int) -> Tensors:
    return {"x": np.zeros((n, 2), np.float32)}


def hundred_ms_model(est: ServiceTimeEstimator, at: float = NOW) -> None:
    """1-row runs of 100 ms, some slower (a shared machine): the bucket's cautious figure ~123 ms."""
    for seconds in (0.100, 0.104, 0.123, 0.101, 0.110, 0.123, 0.102, 0.123):
        est.observe(1, seconds, at)


# -- the estimator's lower bound ------------------------------------------------------------------


def test_the_floor_is_the_fastest_run_of_as_many_rows_or_fewer_not_the_buckets_cautious_figure() -> None:
    est = ServiceTimeEstimator()
    for _ in range(4):
        est.observe(8, 1.000, NOW)  # 8-row runs: 1 s
        est.observe(5, 0.630, NOW)  # 5-row runs, same bucket (5..8): 630 ms
    est.observe(1, 0.130, NOW)
    assert est.predict_seen(5, NOW) > 0.9  # the bucket's cautious figure, from its 8-row runs
    assert est.predict_floor(5, NOW) == pytest.approx(0.630)
    assert est.predict_floor(8, NOW) == pytest.approx(0.630)  # a 5-row run bounds 8 rows too
    assert est.predict_floor(4, NOW) == pytest.approx(0.130)  # only the 1-row runs are of <= 4 rows
    assert est.predict_floor(1, NOW) == pytest.approx(0.130)


def test_runs_of_more_rows_in_its_own_bucket_do_not_bound_it_and_smaller_buckets_do() -> None:
    est = ServiceTimeEstimator()
    est.observe(8, 1.000, NOW)
    for _ in range(3):  # a bucket's fastest bounds larger sizes from its third run on
        est.observe(2, 0.200, NOW)
    assert est.predict_floor(5, NOW) == pytest.approx(0.200)  # not the 8-row run
    for _ in range(3):
        est.observe(3, 0.300, NOW)  # bucket 3..4: the larger of the bounds counts
    assert est.predict_floor(5, NOW) == pytest.approx(0.300)
    assert ServiceTimeEstimator().predict_floor(5, NOW) == 0.0  # nothing seen: unknown


def test_the_floor_fades_with_age_like_the_other_figures() -> None:
    est = ServiceTimeEstimator(half_life_s=5.0)
    est.observe(1, 0.100, NOW)
    assert est.predict_floor(1, NOW + 5.0) == pytest.approx(0.050)


# -- one rule: admission and the queue's give-up point ----------------------------------------------


def admission(hard: float, n: int = 1) -> Admission:
    return Admission(rows=n, priority=1, arrival=NOW, deadline=hard, policy_deadline=None, hard=hard)


@pytest.mark.parametrize("extra_ms", [0.5, 1.5, 2.5, 3.5, 4.5])
async def test_a_request_inside_the_margin_is_refused_at_admission_not_given_up_after(
    extra_ms: float,
) -> None:
    """The tester's case 1: slack = the server's own figure + 0.5..4.5 ms, on one queue."""
    est = ServiceTimeEstimator()
    hundred_ms_model(est)
    q = RequestQueue(BatchingPolicy(max_batch_size=8), lambda: NOW, min_run_s=est.predict_seen, hop_s=HOP_S)
    run_s = est.predict_seen(1, NOW)
    hard = NOW + run_s + extra_ms / 1e3
    with pytest.raises(DeadlineExceeded) as refused:
        p = q.admit(rows(1), admission(hard), lambda n: est.predict_seen(n, NOW))
        left = armed_delay(p, loop_now())[0]  # before: admitted with its give-up point already behind it
        q.remove(p)
        raise AssertionError(f"admitted, to be given up in {left * 1e3:.1f} ms")
    assert "while waiting in the queue" not in str(refused.value)
    assert f"plus a 5.0 ms margin, {run_s * 1e3 + extra_ms:.1f} ms left" in str(refused.value)


async def test_a_request_admitted_is_given_up_no_sooner_than_its_slack_beyond_run_and_margin() -> None:
    est = ServiceTimeEstimator()
    hundred_ms_model(est)
    q = RequestQueue(BatchingPolicy(max_batch_size=8), lambda: NOW, min_run_s=est.predict_floor, hop_s=HOP_S)
    hard = NOW + 0.100 + HOP_S + 0.002
    before = loop_now()
    p = q.admit(rows(1), admission(hard), lambda n: est.predict_floor(n, NOW))
    assert armed_about(p, before, 0.002), armed_delay(p, before)
    q.remove(p)


# -- the batcher: what it wires to admission, formation and the queue -------------------------------


async def batcher_with(be: Gated, clock: Clock, stats: ModelStats | None = None) -> DynamicBatcher:
    b = DynamicBatcher([be], BatchingPolicy(max_batch_size=8), stats or ModelStats(), clock)
    b.start()
    return b


async def test_the_message_names_the_compute_its_basis_and_the_margin() -> None:
    clock, be, stats = Clock(), Gated(), ModelStats()
    b = await batcher_with(be, clock, stats)
    try:
        hundred_ms_model(b.estimator)
        with pytest.raises(DeadlineExceeded) as refused:
            await b.submit(rows(1), 1, deadline=NOW + 0.1025)
        assert str(refused.value) == (
            "deadline cannot be met: about 100.0 ms of compute needed (the fastest recent run of 1 "
            "rows or fewer) plus a 5.0 ms margin, 102.5 ms left"  # its runs off the event loop: the cap
        )
        assert stats.shed == 1 and stats.expired == 0
    finally:
        be.gate.set()
        await b.stop()


async def test_an_idle_batcher_serves_a_request_whose_slack_covers_the_fastest_run_and_margin() -> None:
    """Slack 106 ms: above the fastest run (100 ms) and margin, below the cautious 123 ms."""
    clock, be = Clock(), Gated()
    be.gate.set()
    b = await batcher_with(be, clock)
    try:
        hundred_ms_model(b.estimator)
        out = await asyncio.wait_for(b.submit(rows(1), 1, deadline=NOW + 0.106), LONG)
        assert out["y"].shape == (1, 2) and be.runs == [1]
    finally:
        await b.stop()


async def test_a_five_row_request_is_not_refused_on_eight_row_runs() -> None:
    """The tester's case 3: 5-row runs ~630 ms, 8-row runs ~1 s, a 5-row request with 960 ms."""
    clock, be = Clock(), Gated()
    be.gate.set()
    b = await batcher_with(be, clock)
    try:
        for seconds, n in [(1.050, 8), (0.637, 5), (1.050, 8), (1.050, 8), (0.637, 5), (1.050, 8)]:
            b.estimator.observe(n, seconds, NOW)  # mostly 8-row runs: the bucket's figure ~1050 ms
        out = await asyncio.wait_for(b.submit(rows(5), 5, deadline=NOW + 0.960), LONG)
        assert out["y"].shape == (5, 2) and be.runs == [5]
    finally:
        await b.stop()


async def test_formation_drops_on_the_same_rule_and_says_why() -> None:
    """Queued behind a held instance, a request whose slack the floor then says is too short is
    dropped unrun by formation, with the same figures as admission's refusal."""
    clock, be, stats = Clock(), Gated(), ModelStats()
    b = await batcher_with(be, clock, stats)
    try:
        running = asyncio.ensure_future(b.submit(rows(1), 1))
        await asyncio.wait_for(be.started.wait(), LONG)
        doomed = asyncio.ensure_future(b.submit(rows(2), 2, deadline=NOW + 10.0))  # nothing known yet
        while b.queued_requests != 1:
            await asyncio.sleep(0)
        # 100 ms left: a 2-row run takes 97 ms at least, plus the hop margin: its 5 ms cap, since the
        # running batch, formed at NOW, is answered at NOW + 9.9 (batcher/hop.py).
        clock.now = NOW + 9.9
        for _ in range(3):  # three runs: their fastest bounds 2 rows (the 1-row run took ~0 s)
            b.estimator.observe(2, 0.097, clock.now)
        be.gate.set()
        why = r"about 97\.0 ms of compute needed .* plus a 5\.0 ms margin"
        with pytest.raises(DeadlineExceeded, match=why):
            await asyncio.wait_for(doomed, LONG)
        await asyncio.wait_for(running, LONG)
        assert be.runs == [1] and stats.expired == 1
    finally:
        be.gate.set()
        await b.stop()
