"""loadtest/failover.py's bookkeeping: calls sorted into phases around the fault, retries counted."""

from __future__ import annotations

import random

import grpc

from loadtest.failover import Call, CountingRetry, phases


def test_calls_are_sorted_into_before_during_and_after_the_fault() -> None:
    calls = [
        Call(0.5, 0.6, None),  # warm-up: in no phase
        Call(1.0, 1.01, None),  # before
        Call(1.9, 2.3, None),  # in flight at the fault (t=2): during
        Call(2.5, 2.51, None),  # started within the 1 s window: during
        Call(3.5, 3.52, None),  # after
    ]
    result = phases(calls, warm_at=1.0, killed_at=2.0, window_s=1.0)
    assert [result[p]["calls"] for p in ("before", "during", "after")] == [1, 2, 1]
    assert result["during"]["max_ms"] == 400.0
    assert result["in_flight_at_kill"] == 1
    assert result["last_in_flight_answered_ms_after_kill"] == 300.0


def test_only_retries_the_policy_grants_are_counted() -> None:
    policy = CountingRetry(max_attempts=2)
    rng = random.Random(0)
    assert policy.delay(grpc.StatusCode.UNAVAILABLE, 0, 10.0, rng) is not None
    assert policy.delay(grpc.StatusCode.UNAVAILABLE, 1, 10.0, rng) is None  # attempts used up
    assert policy.delay(grpc.StatusCode.INVALID_ARGUMENT, 0, 10.0, rng) is None
    assert policy.retries == {"UNAVAILABLE": 1}
