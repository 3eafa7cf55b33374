"""The hop margin, measured (batcher/hop.py). A fixed 5 ms had refused every deadline of 5 ms or less,
even for a model run inline in 25 us (a hostile client's finding, session 58): "about 0.0 ms of
compute needed ... plus a 5.0 ms margin, 4.0 ms left". Now the margin is a 1 ms floor for the ways in
and out, plus the largest recent hop the batcher saw around a queued batch's run, at most 5 ms."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from batcher import BatchingPolicy, DeadlineExceeded, DynamicBatcher, ModelStats, Tensors
from batcher.errors import cannot_be_met
from batcher.hop import CAP_S, FLOOR_S, HopMargin, hop_at
from tests.support.batcher_fakes import Clock, Gated, turns_until

NOW = 100.0
LONG = 5.0  # an upper bound no healthy wait comes near


def test_the_margin_is_its_floor_until_a_hop_is_seen() -> None:
    hop = HopMargin()
    assert hop.at(NOW) == FLOOR_S == 0.001
    hop.observe(0.0034, 0.0004, NOW)  # formed 3.4 ms before its answers, 0.4 ms of it the run
    assert hop.at(NOW) == pytest.approx(FLOOR_S + 0.003)
    assert hop.at(NOW + 10.0) == pytest.approx(FLOOR_S + 0.0015)  # halved in 10 s
    hop.observe(0.001, 0.0002, NOW + 10.0)  # a smaller hop does not replace the faded larger one
    assert hop.at(NOW + 10.0) == pytest.approx(FLOOR_S + 0.0015)
    hop.observe(0.0001, 0.0005, NOW + 10.0)  # a run timed longer than its whole (clocks differ)
    assert hop.at(NOW + 10.0) == pytest.approx(FLOOR_S + 0.0015)


def test_the_margin_never_asks_more_than_the_former_fixed_5_ms() -> None:
    hop = HopMargin()
    hop.observe(9.9, 0.001, NOW)  # a stalled process
    assert hop.at(NOW) == CAP_S == 0.005
    assert HopMargin(floor_s=0.002).at(NOW) == 0.002
    hop.observe(0.003, 0.0, NOW + 100.0)  # a smaller hop, once the stall has faded
    assert hop.at(NOW + 100.0) == pytest.approx(0.004)
    assert HopMargin(floor_s=0.0).at(NOW) == 0.0  # the bounds themselves are allowed
    assert HopMargin(floor_s=CAP_S).at(NOW) == CAP_S
    with pytest.raises(ValueError, match="floor_s <= cap_s"):
        HopMargin(floor_s=0.006)
    with pytest.raises(ValueError, match="floor_s <= cap_s"):
        HopMargin(floor_s=-0.001)


def test_while_runs_go_off_the_loop_the_margin_is_the_cap() -> None:
    off = [True]
    hop = HopMargin(off_loop=lambda: off[0])
    hop.observe(0.003, 0.001, NOW, inline=True)
    assert hop.at(NOW) == CAP_S  # an executor's runs: the cap, whatever was measured
    off[0] = False
    assert hop.at(NOW) == pytest.approx(FLOOR_S + 0.002)
    hop.observe(0.009, 0.001, NOW, inline=False)  # a batch off the loop tells nothing of the hop
    assert hop.at(NOW) == pytest.approx(FLOOR_S + 0.002)


def test_a_fixed_figure_is_a_margin_too() -> None:
    assert hop_at(0.005)(NOW) == 0.005
    hop = HopMargin()
    assert hop_at(hop.at) == hop.at


class Inline:
    """A RunsBlocking backend answering y = 2 * x on the caller's thread when run inline."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inline")
        self.runs = 0

    @property
    def executor(self) -> ThreadPoolExecutor:
        return self.pool

    async def run(self, inputs: Tensors) -> Tensors:
        raise AssertionError("a RunsBlocking backend is run through run_blocking")

    def run_blocking(self, inputs: Tensors) -> Tensors:
        self.runs += 1
        return {"y": inputs["x"] * 2}


X = {"x": np.ones((1, 2), np.float32)}


async def test_a_model_run_inline_in_25_us_serves_a_2_ms_deadline() -> None:
    clock, be = Clock(NOW), Inline()
    b = DynamicBatcher([be], BatchingPolicy(max_batch_size=8), ModelStats(), clock, inline_max_s=0.001)
    b.start()
    try:
        for _ in range(16):  # runs of a row take 25 us, on the loop thread
            b.estimator.observe(1, 25e-6, NOW, cpu_s=25e-6, nbytes=8)
        out = b.run_now(X, b.admission(1, deadline=NOW + 0.002))
        assert out is not None and out["y"].tolist() == [[2.0, 2.0]]  # refused at 5 ms of margin
        with pytest.raises(DeadlineExceeded) as refused:
            b.run_now(X, b.admission(1, deadline=NOW + 0.0009))
        assert str(refused.value) == (
            "deadline cannot be met: about 0.0 ms of compute needed (the fastest recent run of 1 rows "
            "or fewer) plus a 1.0 ms margin, 0.9 ms left"
        )
        assert be.runs == 1
    finally:
        await b.stop(drain=False, timeout_s=0.1)
        be.pool.shutdown()


async def test_a_batch_run_off_the_event_loop_asks_the_former_5_ms() -> None:
    """A model whose runs go off the event loop (an async backend here, no inline runs) keeps the
    cap, 5 ms, in the refusal's words too, and the forecast's (`finish` adds it after the run): the
    measured hop did not cover such runs' jitter above their fastest (a tester, session 59)."""
    clock, be = Clock(NOW), Gated()
    b = DynamicBatcher([be], BatchingPolicy(max_batch_size=8), ModelStats(), clock)
    b.start()
    try:
        assert b.hop.at(clock.now) == CAP_S
        running = asyncio.ensure_future(b.submit(X, 1))
        await turns_until(lambda: be.runs == [1])
        be.gate.set()
        await asyncio.wait_for(running, LONG)
        for _ in range(16):
            b.estimator.observe(1, 0.010, clock.now)
        assert b.forecast.finish(1, 1) == pytest.approx(0.010 + CAP_S)
        with pytest.raises(DeadlineExceeded, match=r"plus a 5\.0 ms margin, 14\.0 ms left$"):
            await asyncio.wait_for(b.submit(X, 1, deadline=clock.now + 0.014), LONG)
        await asyncio.wait_for(b.submit(X, 1, deadline=clock.now + 0.016), LONG)  # in time
    finally:
        be.gate.set()
        await b.stop(drain=False, timeout_s=0.1)


async def test_the_margin_is_measured_for_a_model_whose_runs_are_an_inline_ones() -> None:
    """FastPath.off_loop: the fastest recent run of a row within inline_max_s (its wall time: a run
    that sleeps on its thread shows its cost there), else the cap; none seen yet: the cap (an unknown
    cost refuses nothing). A cold first run above the limit does not hold it at the cap once a
    faster one is seen (the CPU figure inline runs go by falls by a fifth a run)."""
    clock, be, other = Clock(NOW), Inline(), Inline()
    b = DynamicBatcher([be], BatchingPolicy(max_batch_size=8), ModelStats(), clock, inline_max_s=0.001)
    try:
        assert b.hop.at(NOW) == CAP_S
        b.estimator.observe(1, 0.008, NOW, cpu_s=0.008, nbytes=8)  # cold: 8 ms
        assert b.hop.at(NOW) == CAP_S
        b.estimator.observe(1, 0.0002, NOW, cpu_s=0.0002, nbytes=8)  # then 0.2 ms
        assert b.hop.at(NOW) == FLOOR_S
        slow = DynamicBatcher(
            [other], BatchingPolicy(max_batch_size=8), ModelStats(), clock, inline_max_s=0.001
        )
        for _ in range(3):
            slow.estimator.observe(1, 0.002, NOW, cpu_s=0.0, nbytes=8)  # 2 ms asleep on its thread
        assert slow.hop.at(NOW) == CAP_S
    finally:
        be.pool.shutdown()
        other.pool.shutdown()


def test_a_refusals_figures_show_the_need_past_what_is_left() -> None:
    # One decimal had read as met: "about 0.1 ms ... plus a 1.2 ms margin, 1.3 ms left" (12 of 408
    # refusals of 1-2 ms requests; a tester, session 59). As many decimals as show it, at most 3.
    shown = str(cannot_be_met(1, 0.00012, 0.0012, 0.00131))
    assert shown == (
        "deadline cannot be met: about 0.12 ms of compute needed (the fastest recent run of 1 rows or "
        "fewer) plus a 1.20 ms margin, 1.31 ms left"
    )
    assert "about 0.0 ms of compute needed" in str(cannot_be_met(1, 0.00003, 0.001, 0.0009))
    assert "about 0.123 ms" in str(cannot_be_met(1, 0.000123, 0.0012, 0.001321))  # 1.323 past 1.321: three
    assert "about 0.3 ms" in str(cannot_be_met(1, 0.0003, 0.0012, 0.0015))  # a tie at every precision
    assert str(cannot_be_met(2, 0.010, 0.005, 0.014, ", queued")).endswith(
        "plus a 5.0 ms margin, 14.0 ms left, queued"
    )
