"""batcher/dynamic.py: survivors of the 2026-12-05 mutation run (s48): what DynamicBatcher wires
into its parts. A queued batch run inline past run_timeout_s turns inline runs off (the batch
runner is given the fast path's `overran`), logged under the batcher's name; a sequence request
refused for a full queue while waiting its turn is told when the work already there drains."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import types
from collections.abc import Iterator

import numpy as np
import pytest

import batcher.watchdog as watchdog_module
from batcher import BatchingPolicy, DynamicBatcher, ModelStats, Tensors
from batcher.errors import DeadlineExceeded, QueueFull
from tests.support.batcher_fakes import Clock, Gated, OnPool, turns_until


class OnThreads(OnPool):
    """A RunsBlocking backend answering y = 2 * x; `inline` records, per run, whether it ran on the
    event loop's thread."""

    def __init__(self) -> None:
        super().__init__("on-threads")
        self.loop_thread = threading.get_ident()
        self.inline: list[bool] = []

    def run_blocking(self, inputs: Tensors) -> Tensors:
        self.inline.append(threading.get_ident() == self.loop_thread)
        return {"y": inputs["x"] * 2}


@pytest.fixture
def on_threads() -> Iterator[OnThreads]:
    fake = OnThreads()
    yield fake
    fake.pool.shutdown(wait=True)


def x(v: float = 1.0) -> Tensors:
    return {"x": np.full((1, 2), v, np.float32)}


async def test_a_queued_batch_run_inline_past_run_timeout_turns_inline_runs_off(
    on_threads: OnThreads, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An inline run cannot be cut by the watchdog: one (of a queued batch, not the fast path) that
    took longer than run_timeout_s turns inline runs off, once, with a warning naming the model.
    The inline run's wall time is read from the watchdog's `time.perf_counter`, here a fake on which
    every run takes 5 s. Without `overran` passed to the batch runner the third batch ran inline
    again; with the fast path built without the name (or with None) the warning said "batcher"."""
    ticks = itertools.count(0.0, 5.0)
    monkeypatch.setattr(watchdog_module, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks)))
    b = DynamicBatcher(
        [on_threads], BatchingPolicy(max_batch_size=8), ModelStats(), inline_max_s=1.0,
        run_timeout_s=1.0, name="resnet",
    )  # fmt: skip
    b.start()
    try:
        with caplog.at_level(logging.WARNING, logger="batcher.fast_path"):
            for v in (1.0, 2.0, 3.0):  # queued (`enqueue`), never the fast path
                out = await b.enqueue(x(v), b.admission(1))
                assert out["y"].tolist() == [[2 * v, 2 * v]]
    finally:
        await b.stop(drain=False, timeout_s=0.1)
    # Unknown cost: the executor; known cheap: inline (and 5 s past 1 s); then off.
    assert on_threads.inline == [False, True, False]
    assert [r.getMessage() for r in caplog.records if r.name == "batcher.fast_path"] == [
        "resnet: an inline run took 5.000 s, past run_timeout_s (1 s): none runs inline any more"
    ]


async def test_a_turn_refused_for_a_full_queue_hints_when_the_work_there_drains() -> None:
    """A sequence's request about to wait for its turn is counted as queued (`turn_deadline.hold`);
    refused with QueueFull, its retry hint is when the running and queued work drains, without a
    row of its own (it holds none yet: the same figure as the queue's refusals). Runs of 1 row take
    1 s: 1 s left of the running batch, then the queued request's 1 s, plus the hops; counting a row
    of its own added a third second."""
    clock = Clock()
    gate = Gated()
    b = DynamicBatcher([gate], BatchingPolicy(max_batch_size=1, max_queue_size=1), ModelStats(), clock)
    b.estimator.observe(1, 1.0, clock.now)
    b.start()
    first = asyncio.ensure_future(b.submit(x(1.0), 1))
    second: asyncio.Future[Tensors] | None = None
    try:
        await turns_until(lambda: gate.runs == [1])  # running, held at the gate
        second = asyncio.ensure_future(b.submit(x(2.0), 1))
        await turns_until(lambda: b.queued_requests == 1)  # the queue is full
        with pytest.raises(QueueFull) as turn_refused:
            b.turn_deadline.hold(x(3.0), b.admission(1))
        with pytest.raises(QueueFull) as queue_refused:
            await b.submit(x(4.0), 1)
    finally:
        gate.gate.set()
        await b.stop(drain=False, timeout_s=0.1)
        for f in (first, second):
            if f is not None:
                f.cancel()
    hint = turn_refused.value.retry_after_s
    assert hint is not None and 2.0 < hint < 2.5
    assert hint == queue_refused.value.retry_after_s


# -- formation reads the estimator at the clock's time: figures fade while no run is seen ---------
# One run seen 100 s (20 half-lives of the estimator's default 5 s) before the requests: faded to
# about a millionth of what it was. Read "as last seen" (`now=None`) it is the full second.


def started_after_a_slow_run(rows: int) -> tuple[Clock, Gated, DynamicBatcher]:
    """A started batcher whose estimator saw a run of `rows` rows take 10 s, 100 s ago (20 half-lives:
    faded to ~10 us). Seconds, not tenths: a request's real timer (due ~5 s on, the deadline it
    is given) never runs before a stalled machine forms it."""
    clock = Clock(100.0)
    gate = Gated(gate_open=True)
    b = DynamicBatcher([gate], BatchingPolicy(max_batch_size=8), ModelStats(), clock)
    b.estimator.observe(rows, 10.0, clock.now)
    clock.now += 100.0
    b.start()
    return clock, gate, b


async def test_a_request_is_not_dropped_on_a_run_long_faded() -> None:
    """A run of 1 row took 10 s, 100 s ago; a request with 5 s left is admitted and run (what runs
    seen prove a run takes fades, as admission's figure does). Formation dropping on the unfaded
    floor (`predict_floor(now=None)`) answered it DEADLINE_EXCEEDED unrun."""
    clock, gate, b = started_after_a_slow_run(1)
    try:
        out = await b.submit(x(3.0), 1, deadline=clock.now + 5.0)
    finally:
        await b.stop(drain=False, timeout_s=0.1)
    assert out["y"].tolist() == [[6.0, 6.0]] and gate.runs == [1]


async def test_a_request_joins_a_batch_whose_size_ran_slowly_long_ago() -> None:
    """A run of 2 rows took 10 s, 100 s ago. Two requests queued together, the first with 5 s
    left: on the faded prediction a batch of both ends in time, so they run as one. Formation
    predicting "as last seen" (`predict(now=None)`) cut the batch before the second (10 s > 5 s):
    two runs of 1 row."""
    clock, gate, b = started_after_a_slow_run(2)
    try:
        # Both queued before the dispatcher forms (tasks run in order, its wake-up after them).
        first = asyncio.ensure_future(b.submit(x(1.0), 1, deadline=clock.now + 5.0))
        second = asyncio.ensure_future(b.submit(x(2.0), 1))
        outs = await asyncio.gather(first, second)
    finally:
        await b.stop(drain=False, timeout_s=0.1)
    assert [o["y"].tolist() for o in outs] == [[[2.0, 2.0]], [[4.0, 4.0]]]
    assert gate.runs == [2]


async def test_a_request_dropped_while_queued_names_the_floor_it_was_dropped_on() -> None:
    """The answer to a request formation drops says what its compute figure is (`basis`), read at
    the same time as the figure. A 1-row run of 0.9 s seen 100 s ago has faded to nothing, so the
    floor of 2 rows is the fastest of the three fresh 2-row runs (0.5 s), a bound of its own. Read
    "as last seen" (`basis(rows, None)`), the old 0.9 s run still counted and the words named
    "the fastest recent run of 2 rows or fewer" instead.

    The request (1 s left) waits for company (max_queue_delay_s 10, woken before its deadline); the
    clock then moves 0.6 s, and an arrival makes the dispatcher form: 0.4 s left is less than the
    floor and margin, so it is dropped."""
    clock = Clock(100.0)
    gate = Gated(gate_open=True)
    policy = BatchingPolicy(max_batch_size=3, max_queue_delay_s=10.0)
    b = DynamicBatcher([gate], policy, ModelStats(), clock)
    b.estimator.observe(1, 0.9, clock.now)
    clock.now += 100.0
    for _ in range(3):
        b.estimator.observe(2, 0.5, clock.now)
    b.start()
    poke: asyncio.Future[Tensors] | None = None
    try:
        two = {"x": np.ones((2, 2), np.float32)}
        waiting = asyncio.ensure_future(b.submit(two, 2, deadline=clock.now + 1.0))
        await asyncio.sleep(0)  # admitted and queued, its timer armed ~0.5 s on (real time)
        assert b.queued_requests == 1
        clock.now += 0.6  # in the same loop step: before that timer can run, however slow the machine
        poke = asyncio.ensure_future(b.submit(x(), 1))  # an arrival: the dispatcher forms again
        with pytest.raises(DeadlineExceeded) as dropped:
            await waiting
    finally:
        await b.stop(drain=False, timeout_s=0.1)
        if poke is not None:
            poke.cancel()
    assert gate.runs == []
    said = str(dropped.value)
    # 493.1 ms: the 0.5 s runs faded 0.6 s, the fastest ever seen fading 6 times slower (estimate.py).
    assert said.startswith("deadline cannot be met: about 493.1 ms of compute needed ")
    assert "(the fastest of 3 recent runs of 2 rows) plus a 5.0 ms margin, 400.0 ms left" in said
