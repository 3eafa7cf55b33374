"""RetryPolicy.attempt_timeout_s: an attempt cut short by it counts as its endpoint hanging (marked
down, the call retried elsewhere within its deadline); without it nothing changes."""

from __future__ import annotations

import random

import pytest

from clients import RetryPolicy
from clients.endpoints import Attempts, Backoff, EndpointPool
from clients.errors import DeadlineExceeded


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def attempts(policy: RetryPolicy, timeout_s: float) -> tuple[Attempts, EndpointPool, FakeClock]:
    clock = FakeClock()
    pool = EndpointPool(["a", "b"], recheck=Backoff(1.0, 8.0, jitter=0.0), clock=clock, rng=random.Random(0))
    return Attempts(pool, policy, timeout_s, clock=clock, rng=random.Random(0)), pool, clock


NO_WAIT = Backoff(0.0, 0.0, jitter=0.0)


def test_a_cut_attempt_marks_its_endpoint_down_and_the_call_moves_on() -> None:
    calls, pool, clock = attempts(RetryPolicy(attempt_timeout_s=0.5, backoff=NO_WAIT), 2.0)
    step = calls.next()
    assert (step.address, step.timeout_s, step.left_s) == ("a", 0.5, 2.0)
    clock.now += 0.5
    assert calls.failed(step, DeadlineExceeded("attempt timed out")) == 0.0
    assert pool.health() == {"a": False, "b": True}
    step = calls.next()
    assert (step.address, step.timeout_s, step.left_s) == ("b", 0.5, 1.5)


def test_the_last_attempt_gets_only_what_is_left_and_its_deadline_is_final() -> None:
    calls, pool, clock = attempts(RetryPolicy(attempt_timeout_s=0.5, backoff=NO_WAIT), 0.75)
    calls.failed(calls.next(), DeadlineExceeded("cut"))
    clock.now += 0.5
    step = calls.next()
    assert step.timeout_s == step.left_s == pytest.approx(0.25)
    with pytest.raises(DeadlineExceeded):
        calls.failed(step, DeadlineExceeded("the call's own deadline"))
    assert pool.health()["b"] is True  # the call ran out of time: no sign that "b" hangs


def test_without_it_an_attempt_gets_the_whole_call_and_a_deadline_is_never_retried() -> None:
    calls, pool, _ = attempts(RetryPolicy(backoff=NO_WAIT), 2.0)
    step = calls.next()
    assert step.timeout_s == step.left_s == 2.0
    with pytest.raises(DeadlineExceeded):
        calls.failed(step, DeadlineExceeded("late"))
    assert pool.health() == {"a": True, "b": True}


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
def test_it_must_be_positive_and_finite(bad: float) -> None:
    with pytest.raises(ValueError, match="attempt_timeout_s"):
        RetryPolicy(attempt_timeout_s=bad)
