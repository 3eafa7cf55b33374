"""RequestQueue rules that the whole-scope mutation run of 2026-12-05 (session 48) showed untested
(batcher/queue.py): requests held for their sequence's turn counted against a shared level's bound
and charged no bytes without budgets, what a queued request keeps of its admission (`since`,
`computed`), the floor (`min_run_s`, `floor_basis`) asked as of the time it applies, and the expiry
timer that fires early, exactly on time, or for a give-up point that moved later.

The expiry timer runs on the loop's real time (`time.monotonic`), whatever the queue's clock says:
`LoopTimers` stands in for the running loop's `call_later` and `Monotonic` for the module's
`time`, so each firing happens at a time the test chooses."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import batcher.queue
from batcher.admission import Admission
from batcher.budget import ByteBudget
from batcher.errors import DeadlineExceeded, QueueSizeReached
from batcher.queue import Request, RequestQueue
from batcher.types import BatchingPolicy, LevelQueuePolicy

NOW = 10.0
X = {"x": np.zeros((1, 4), np.float32)}  # 16 bytes


def admission(hard: float | None = None, priority: int = 1, **more: Any) -> Admission:
    return Admission(1, priority, NOW, hard, None, hard, **more)


def free(rows: int) -> float:
    return 0.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


class Floor:
    """A `min_run_s` whose figure depends on when it is asked (the estimator's fades with age):
    `figures[now]`; records the times asked."""

    def __init__(self, figures: dict[float, float]) -> None:
        self.figures = figures
        self.asked: list[float | None] = []

    def __call__(self, rows: int, now: float) -> float:
        self.asked.append(now)
        return self.figures[now]


class Monotonic:
    """Stands in for the `time` module batcher/queue.py reads the loop's time from."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class Handle:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class LoopTimers:
    """The running loop's `call_later`, recorded: (delay, callback, args, handle) per call."""

    def __init__(self) -> None:
        self.armed: list[tuple[float, Callable[..., None], tuple[Any, ...], Handle]] = []

    def __call__(self, delay: float, callback: Callable[..., None], *args: Any) -> Handle:
        handle = Handle()
        self.armed.append((delay, callback, args, handle))
        return handle

    def fire_last(self) -> None:
        _, callback, args, handle = self.armed[-1]
        assert not handle.cancelled
        callback(*args)


def fake_timers(monkeypatch: pytest.MonkeyPatch) -> tuple[Monotonic, LoopTimers]:
    """From within a test's running loop: its `call_later` and the queue module's `time` faked."""
    mono, armed = Monotonic(), LoopTimers()
    monkeypatch.setattr(batcher.queue, "time", mono)
    monkeypatch.setattr(asyncio.get_running_loop(), "call_later", armed)
    return mono, armed


def expired_with(p: Request) -> str:
    assert p.handle.future.done()
    exc = p.handle.future.exception()
    assert isinstance(exc, DeadlineExceeded)
    return str(exc)


async def test_requests_held_for_their_turn_count_against_a_shared_levels_bound() -> None:
    """Level 2 has no policy of its own: its bound is the shared max_queue_size, over the requests
    queued at the levels without one plus those held for their sequence's turn (the mutant
    subtracted the held ones)."""
    policy = BatchingPolicy(
        max_batch_size=4, max_queue_size=2, priority_levels=3, level_policies=((1, LevelQueuePolicy(5)),)
    )
    q = RequestQueue(policy, Clock())
    q.admit(X, admission(priority=2), free)
    q.hold(X, 2)
    assert q.full(2) and q.full(3) and not q.full(1)
    with pytest.raises(QueueSizeReached) as refused:
        q.admit(X, admission(priority=3), free)
    assert str(refused.value) == (
        "Exceeds maximum queue size (2 requests waiting at priority 3, 1 of them for their sequence's "
        "turn; max_queue_size=2)"
    )


def test_a_hold_without_byte_budgets_charges_no_bytes() -> None:
    q = RequestQueue(BatchingPolicy(max_batch_size=4), Clock())
    assert q.hold(X, 1) == 0 and q.hold(X, 1, 17) == 0
    assert q.nbytes == 0 and q.held == 2


def test_a_hold_charges_its_inputs_and_only_the_extra_bytes_asked_for() -> None:
    budget = ByteBudget(1024, "max_queued_bytes_per_model")
    q = RequestQueue(BatchingPolicy(max_batch_size=4), Clock(), budgets=(budget,))
    assert q.hold(X, 1) == 16  # no extra unless asked (the mutant's default added 1)
    assert q.hold(X, 1, 4) == 20
    assert q.nbytes == 36 and budget.used == 36
    q.release_hold(16)
    assert q.nbytes == 20 and budget.used == 20 and q.held == 1


async def test_a_queued_request_keeps_its_admissions_compute_callback() -> None:
    def computed(times: tuple[int, int, int]) -> None:
        pass

    p = RequestQueue(BatchingPolicy(max_batch_size=4), Clock()).admit(X, admission(computed=computed), free)
    assert p.computed is computed


async def test_a_queued_request_is_placed_as_of_its_admission_or_its_ensembles() -> None:
    """`since` orders a request within its priority: its own admission time (the queue's clock),
    or, for an ensemble's step, when its ensemble was admitted (earlier: ahead of later arrivals)."""
    clock = Clock()
    q = RequestQueue(BatchingPolicy(max_batch_size=4), clock)
    assert q.admit(X, admission(), free).since == NOW
    clock.now = NOW + 2.0
    assert q.admit(X, admission(since=NOW - 3.0), free).since == NOW - 3.0
    assert q.admit(X, admission(), free).since == NOW + 2.0


def test_a_refusal_at_admission_names_the_floor_as_of_now() -> None:
    q = RequestQueue(
        BatchingPolicy(max_batch_size=4),
        Clock(),
        floor_basis=lambda rows, now: f"the floor of {rows} rows as of {now}",
    )
    with pytest.raises(DeadlineExceeded) as refused:
        q.check(admission(hard=NOW + 0.25), lambda rows: 0.5)
    assert str(refused.value) == (
        "deadline cannot be met: about 500.0 ms of compute needed (the floor of 1 rows as of 10.0), "
        "250.0 ms left"
    )


def test_gave_up_states_the_floor_as_of_the_time_given() -> None:
    floor = Floor({NOW + 0.5: 0.25})
    q = RequestQueue(BatchingPolicy(max_batch_size=4), Clock(), min_run_s=floor)
    said = q.gave_up(1, NOW + 1.0, NOW + 0.5, ", while waiting for its turn")
    assert str(said) == (
        "deadline cannot be met: about 250.0 ms of compute needed (the fastest recent run of 1 rows or "
        "fewer), 500.0 ms left, while waiting for its turn"
    )
    assert floor.asked == [NOW + 0.5]


async def test_an_expiry_timer_that_fires_early_is_armed_again_for_what_is_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """uvloop fires timers up to ~1.2 ms early: the request is not failed then, but armed again for
    the 2 ms left (for the same give-up point), and failed when that timer fires."""
    mono, armed = fake_timers(monkeypatch)
    clock = Clock()
    late: list[tuple[float, float]] = []
    q = RequestQueue(BatchingPolicy(max_batch_size=4), clock, on_late=lambda s, now: late.append((s, now)))
    p = q.admit(X, admission(hard=NOW + 0.5), free)  # no run seen: it gives up at its deadline
    assert [(delay, args[1:]) for delay, _, args, _ in armed.armed] == [(0.5, (1000.5, NOW + 0.5))]
    mono.now, clock.now = 1000.498, NOW + 0.498
    armed.fire_last()
    assert not p.handle.future.done() and late == [] and len(q) == 1
    delay, _, args, handle = armed.armed[-1]
    assert len(armed.armed) == 2 and delay == pytest.approx(0.002) and args[2] == NOW + 0.5
    assert p.handle.timer is handle
    mono.now, clock.now = 1000.5, NOW + 0.5
    armed.fire_last()
    assert expired_with(p) == "deadline exceeded while waiting in the queue"
    assert len(q) == 0 and len(armed.armed) == 2 and late == [(0.0, NOW + 0.5)]


async def test_an_expiry_timer_that_fires_exactly_when_due_fails_the_request_then(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing is left to wait at the time due: failed now, not armed again for 1 ms more."""
    mono, armed = fake_timers(monkeypatch)
    clock = Clock()
    q = RequestQueue(BatchingPolicy(max_batch_size=4), clock)
    p = q.admit(X, admission(hard=NOW + 0.5), free)
    mono.now, clock.now = 1000.5, NOW + 0.5
    armed.fire_last()
    assert expired_with(p) == "deadline exceeded while waiting in the queue"
    assert len(armed.armed) == 1 and len(q) == 0


async def test_a_give_up_point_that_moved_later_is_waited_for_with_the_floor_as_of_each_firing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The floor was 500 ms at admission (give up at 10.5 for a deadline at 11); when the timer
    fires it has faded to 250 ms: armed again for 10.75, and failed then, naming the floor as of
    then. Each figure is asked as of the queue's clock at that moment (the mutants asked as of None,
    the figure of no time)."""
    mono, armed = fake_timers(monkeypatch)
    clock = Clock()
    floor = Floor({NOW: 0.5, NOW + 0.5: 0.25, NOW + 0.75: 0.25})
    q = RequestQueue(BatchingPolicy(max_batch_size=4), clock, min_run_s=floor)
    p = q.admit(X, admission(hard=NOW + 1.0), free)
    assert [(delay, args[1:]) for delay, _, args, _ in armed.armed] == [(0.5, (1000.5, NOW + 0.5))]
    assert floor.asked == [NOW]
    mono.now, clock.now = 1000.625, NOW + 0.5  # fired 125 ms late by the loop's time
    armed.fire_last()
    assert not p.handle.future.done()
    assert [(delay, args[1:]) for delay, _, args, _ in armed.armed[1:]] == [(0.25, (1000.875, NOW + 0.75))]
    mono.now, clock.now = 1000.875, NOW + 0.75
    armed.fire_last()
    assert expired_with(p) == (
        "deadline cannot be met: about 250.0 ms of compute needed (the fastest recent run of 1 rows or "
        "fewer), 250.0 ms left, while waiting in the queue"
    )
    assert floor.asked == [NOW, NOW + 0.5, NOW + 0.75, NOW + 0.75] and len(q) == 0
