"""batcher/turn_deadline.py, pinned where mutation testing found it unpinned: a sequence request
waiting for its turn gives up where a queued request does (as of the clock's now, only with a
deadline), counts `expired` across requests (given up, or cut at its deadline from the last start
on, exactly), is held against the queue at its own priority with its own bytes, and is told a retry
hint only for a full queue with a drain known. Its wait for the give-up point, on fake loop timers:
a timer on time ends it, one early waits out the rest (at least 1 ms), and a point moved no more
than 1 ms later is not waited for again.

TurnDeadlines.hold's default (a Protocol's stub, never run: a caller's `hold` is its runner's,
TurnDeadline.hold, whose default is pinned here) is an equivalent mutant.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from batcher import turn_deadline
from batcher.admission import Admission
from batcher.budget import ByteBudget
from batcher.errors import BatcherError, DeadlineExceeded, QueueFull, QueueSizeReached
from batcher.form import NO_MARGIN, WakeMargin
from batcher.queue import RequestQueue
from batcher.stats import ModelStats
from batcher.turn_deadline import WAITING_TURN, TurnDeadline, wait_turn
from batcher.types import BatchingPolicy, LevelQueuePolicy, Tensors
from tests.support.batcher_fakes import Clock

X: Tensors = {"x": np.ones((1, 2), np.float32)}  # 8 input bytes


def admission(
    hard: float | None = 110.0, *, rows: int = 1, priority: int = 1, counted: bool = True
) -> Admission:
    return Admission(rows, priority, 100.0, hard, None, hard, counted)


class Floor:
    """A queue's `min_run_s`: 10 ms a row, the `now` of each call recorded."""

    def __init__(self) -> None:
        self.asked: list[tuple[int, float]] = []

    def __call__(self, rows: int, now: float) -> float:
        self.asked.append((rows, now))
        return 0.010 * rows


def refusals(stats: ModelStats) -> dict[str, int]:
    return {reason: n for reason, n in stats.rejections.items() if n}


def runner(
    policy: BatchingPolicy | None = None,
    *,
    floor: Floor | None = None,
    budgets: tuple[ByteBudget, ...] = (),
    margin: WakeMargin = NO_MARGIN,
    drain: float | None = None,
) -> tuple[TurnDeadline, ModelStats]:
    """A TurnDeadline on a real queue (a 5 ms hop), its stats; `drain`: its drain hint (None: none)."""
    queue = RequestQueue(
        policy or BatchingPolicy(max_batch_size=4),
        Clock(),
        budgets=budgets,
        min_run_s=floor or Floor(),
        hop_s=0.005,
    )
    stats = ModelStats()
    return TurnDeadline(queue, stats, margin, None if drain is None else (lambda: drain)), stats


# --- TurnDeadline -----------------------------------------------------------------------------


def test_the_give_up_point_is_the_queues_as_of_the_now_given() -> None:
    floor = Floor()
    td, _ = runner(floor=floor)
    assert td.give_up_at(admission(110.0, rows=2), 101.5) == pytest.approx(110.0 - 0.020 - 0.005)
    assert floor.asked == [(2, 101.5)]  # the floor as of that now (it fades with age)


def test_a_request_without_a_deadline_has_no_give_up_point_even_with_a_floor_known() -> None:
    floor = Floor()
    td, _ = runner(floor=floor)
    assert td.give_up_at(admission(None), 101.5) is None
    assert floor.asked == []


def test_requests_given_up_add_to_expired_an_uncounted_one_does_not() -> None:
    td, stats = runner()
    stats.expired = 3  # expired in the queue already
    errors = [td.gave_up(admission(110.0), 109.99, WAITING_TURN) for _ in range(2)]
    assert stats.expired == 5
    td.gave_up(admission(110.0, counted=False), 109.99, WAITING_TURN)  # a shadow copy
    assert stats.expired == 5
    assert str(errors[0]).startswith("deadline cannot be met") and str(errors[0]).endswith(WAITING_TURN)


def test_a_held_request_is_charged_its_inputs_bytes_plus_extra_only_and_released() -> None:
    budget = ByteBudget(1000, "max_queued_bytes_per_model")
    td, _ = runner(budgets=(budget,))
    assert td.hold(X, admission()) == 8  # no extra unless asked
    assert td.hold(X, admission(), 4) == 12
    assert budget.used == 20
    td.release(8)
    td.release(12)
    assert budget.used == 0


def test_a_held_request_counts_against_its_own_prioritys_bound() -> None:
    policy = BatchingPolicy(
        max_batch_size=4, max_queue_size=10, priority_levels=2, level_policies=((1, LevelQueuePolicy(1)),)
    )
    td, stats = runner(policy)
    td.hold(X, admission(priority=1))
    td.hold(X, admission(priority=2))  # level 2 shares max_queue_size 10
    with pytest.raises(QueueSizeReached, match=r"at priority 1, 2 of them .*priority_queue_policy\[1\]"):
        td.hold(X, admission(priority=1))
    assert refusals(stats) == {"queue_full": 1}


def test_a_full_queue_refusal_carries_the_drain_hint() -> None:
    td, stats = runner(BatchingPolicy(max_batch_size=4, max_queue_size=1), drain=0.25)
    td.hold(X, admission())
    with pytest.raises(QueueSizeReached) as refused:
        td.hold(X, admission())
    assert refused.value.retry_after_s == 0.25
    assert refusals(stats) == {"queue_full": 1}


def test_a_full_byte_budget_refusal_carries_the_drain_hint_counted_as_queued_bytes() -> None:
    td, stats = runner(budgets=(ByteBudget(10, "max_queued_bytes_per_model"),), drain=0.5)
    td.hold(X, admission())
    with pytest.raises(QueueFull) as refused:
        td.hold(X, admission())
    assert not isinstance(refused.value, QueueSizeReached) and refused.value.retry_after_s == 0.5
    assert refusals(stats) == {"queued_bytes": 1}


def test_a_full_queue_refusal_without_a_drain_known_has_no_hint() -> None:
    td, stats = runner(BatchingPolicy(max_batch_size=4, max_queue_size=1))
    td.hold(X, admission())
    with pytest.raises(QueueSizeReached) as refused:
        td.hold(X, admission(counted=False))
    assert refused.value.retry_after_s is None
    assert refusals(stats) == {}  # a shadow copy's refusal is not the model's


class Refusing(RequestQueue):
    """A queue whose `hold` refuses with `refusal`, whatever the request."""

    def __init__(self, refusal: BatcherError) -> None:
        super().__init__(BatchingPolicy(max_batch_size=4), Clock())
        self.refusal = refusal

    def hold(self, inputs: Tensors, level: int, extra: int = 0) -> int:
        raise self.refusal


def test_a_refusal_other_than_a_full_queue_gets_no_drain_hint() -> None:
    stats = ModelStats()
    td = TurnDeadline(Refusing(DeadlineExceeded("too late")), stats, NO_MARGIN, lambda: 0.25)
    with pytest.raises(DeadlineExceeded) as refused:
        td.hold(X, admission())
    assert refused.value.retry_after_s is None
    assert refusals(stats) == {"deadline": 1}


MARGIN = WakeMargin(fixed_s=0.005, share=0.01)


def test_a_caller_cut_from_its_last_start_on_counts_expired_each_time() -> None:
    td, stats = runner(margin=MARGIN)
    a = admission(110.0)
    last = MARGIN.last_start(110.0, 100.0, 0.0)  # its deadline less the margin: 109.895
    td.cut(a, last)  # exactly at it
    assert stats.expired == 1
    td.cut(a, 110.0)
    assert stats.expired == 2


def test_a_caller_cut_before_its_last_start_counts_nothing() -> None:
    td, stats = runner(margin=MARGIN)
    a = admission(110.0)
    last = MARGIN.last_start(110.0, 100.0, 0.0)
    td.cut(a, last - 0.5)  # a cancel, half a second before (no run time in the margin)
    td.cut(a, last - 1e-6)
    td.cut(admission(110.0, counted=False), 110.0)
    td.cut(admission(None), 110.0)
    assert stats.expired == 0


# --- wait_turn, on fake loop timers -----------------------------------------------------------


class Timers:
    """`asyncio.wait_for` and `time.monotonic` as wait_turn reads them: no wait is real and the
    lock is never taken; each timer fires at once, its `early` seconds before it was due (0: on
    time), moving the fake monotonic time (also the clock) to then."""

    def __init__(self, *early: float) -> None:
        self.t = 0.0
        self.waits: list[float] = []
        self._early = list(early)

    def monotonic(self) -> float:
        return self.t

    async def wait_for(self, aw: Coroutine[Any, Any, Any], timeout: float) -> Any:
        aw.close()
        self.waits.append(timeout)
        if len(self.waits) > 20:
            raise AssertionError(f"wait_turn keeps waiting: {self.waits[:5]} ...")
        self.t += timeout - (self._early.pop(0) if self._early else 0.0)
        raise asyncio.TimeoutError


def fake_timers(monkeypatch: pytest.MonkeyPatch, *early: float) -> Timers:
    timers = Timers(*early)
    monkeypatch.setattr(turn_deadline, "time", SimpleNamespace(monotonic=timers.monotonic))
    fake = SimpleNamespace(
        wait_for=timers.wait_for, TimeoutError=asyncio.TimeoutError, CancelledError=asyncio.CancelledError
    )
    monkeypatch.setattr(turn_deadline, "asyncio", fake)
    return timers


class Scripted:
    """TurnDeadlines whose give-up points are `points`, one per ask (the last stands); records each
    ask's `now` and each give-up's."""

    def __init__(self, *points: float) -> None:
        self.points = points
        self.asked: list[float] = []
        self.gave: list[float] = []

    def give_up_at(self, a: Admission, now: float) -> float | None:
        self.asked.append(now)
        return self.points[min(len(self.asked), len(self.points)) - 1]

    def gave_up(self, a: Admission, now: float, where: str) -> DeadlineExceeded:
        self.gave.append(now)
        return DeadlineExceeded("gave up" + where)

    def cut(self, a: Admission, now: float) -> None:
        raise AssertionError("not cancelled")

    def hold(self, inputs: Tensors, a: Admission, extra: int = 0) -> int:
        return 0

    def release(self, nbytes: int) -> None:
        pass


async def give_up(timers: Timers, deadlines: Scripted | None, hard: float = 1.0) -> str:
    """Run wait_turn (its turn never comes) to its give-up; what it said."""
    with pytest.raises(DeadlineExceeded) as caught:
        await wait_turn(asyncio.Lock(), admission(hard), timers.monotonic, deadlines)
    return str(caught.value)


async def test_a_timer_on_time_gives_up_at_the_point_asked_as_of_the_clocks_now(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    timers = fake_timers(monkeypatch)
    timers.t = 0.001
    deadlines = Scripted(0.004)
    assert await give_up(timers, deadlines) == "gave up" + WAITING_TURN
    assert deadlines.asked == [0.001, 0.004]  # its point asked as of now, then checked when due
    assert timers.waits == [pytest.approx(0.003)]  # one timer: none after one that fired on time
    assert deadlines.gave == [0.004]


async def test_without_a_give_up_rule_it_gives_up_at_its_deadline_uncounted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    timers = fake_timers(monkeypatch)
    assert await give_up(timers, None, hard=0.004) == "deadline exceeded" + WAITING_TURN
    assert timers.waits == [0.004] and timers.t == 0.004


async def test_a_timer_less_than_1ms_early_waits_1ms_more(monkeypatch: pytest.MonkeyPatch) -> None:
    timers = fake_timers(monkeypatch, 0.0005)  # uvloop's rounding
    deadlines = Scripted(0.004)
    await give_up(timers, deadlines)
    assert timers.waits == [0.004, 0.001]  # at least 1 ms: never a spin on 0 ms timers
    assert deadlines.gave == [pytest.approx(0.0045)] and deadlines.asked[1:] == deadlines.gave


async def test_a_timer_well_early_waits_out_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    timers = fake_timers(monkeypatch, 0.050)
    deadlines = Scripted(0.100)
    await give_up(timers, deadlines)
    assert timers.waits == [0.100, pytest.approx(0.050)]
    assert deadlines.asked == [0.0, pytest.approx(0.100)]  # not checked until its point
    assert deadlines.gave == [pytest.approx(0.100)]


async def test_a_point_moved_1ms_later_is_not_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    timers = fake_timers(monkeypatch)
    deadlines = Scripted(0.004, 0.005)
    assert 0.005 - 0.004 == 0.001  # (exactly, in floats: the boundary itself)
    await give_up(timers, deadlines)
    assert timers.waits == [0.004] and deadlines.gave == [0.004]


async def test_a_point_moved_more_than_1ms_later_is_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    timers = fake_timers(monkeypatch)
    deadlines = Scripted(0.004, 0.010)
    await give_up(timers, deadlines)
    assert timers.waits == [0.004, pytest.approx(0.006)]  # the difference, from the point waited for
    assert deadlines.gave == [pytest.approx(0.010)] and len(deadlines.asked) == 3
