"""Admission.settle: how a request's gRPC deadline, its `timeout` parameter and the model's default
timeout combine (the caller's deadline bounds the request, the queue-policy timeout its wait in the
queue), allow_timeout_override, rows and priority. Plain numbers for time: no event loop, no clock."""

from __future__ import annotations

import pytest

from batcher.admission import Admission
from batcher.errors import TooManyRows
from batcher.types import BatchingPolicy, TimeoutAction

NOW = 100.0
SOONER, LATER = 0.5, 2.0  # seconds after NOW
SOURCES = ("grpc", "timeout", "model")  # the gRPC deadline, the request's `timeout`, the model's default


def policy(
    default_timeout_s: float | None = None,
    action: TimeoutAction = TimeoutAction.REJECT,
    override: bool = True,
    **fields: int,
) -> BatchingPolicy:
    return BatchingPolicy(
        max_batch_size=fields.pop("max_batch_size", 8),
        default_timeout_s=default_timeout_s,
        timeout_action=action,
        allow_timeout_override=override,
        **fields,
    )


def settle(pol: BatchingPolicy, seconds: dict[str, float], rows: int = 1, priority: int = 0) -> Admission:
    """Settle a request at NOW whose sources in `seconds` end that many seconds after NOW."""
    grpc = seconds.get("grpc")
    return Admission.settle(
        pol,
        rows,
        now=NOW,
        deadline=None if grpc is None else NOW + grpc,
        timeout_s=seconds.get("timeout"),
        priority=priority,
    )


def at(seconds: float | None) -> float | None:
    return None if seconds is None else NOW + seconds


@pytest.mark.parametrize("action", list(TimeoutAction))
@pytest.mark.parametrize("grpc_is_sooner", [True, False])
def test_without_a_queue_timeout_the_earlier_of_grpc_deadline_and_timeout_is_hard(
    grpc_is_sooner: bool, action: TimeoutAction
) -> None:
    seconds = {"grpc": SOONER, "timeout": LATER} if grpc_is_sooner else {"grpc": LATER, "timeout": SOONER}
    a = settle(policy(None, action), seconds)
    assert a.deadline == a.hard == NOW + SOONER
    assert (a.policy_deadline, a.reject_at) == (None, None)


@pytest.mark.parametrize("action", list(TimeoutAction))
@pytest.mark.parametrize("earliest", SOURCES)
def test_a_queue_timeout_bounds_the_wait_in_the_queue_never_the_compute(
    earliest: str, action: TimeoutAction
) -> None:
    """Folded into the hard deadline, a 150 ms REJECT timeout failed every request of a 160 ms
    model on an idle server (Triton applies it to the queue only)."""
    seconds = {source: (SOONER if source == earliest else LATER + i) for i, source in enumerate(SOURCES)}
    model = seconds.pop("model")
    a = settle(policy(model, action), seconds)
    assert a.deadline == a.hard == NOW + seconds["grpc"]  # the caller's deadline only
    # The request's own timeout replaces the model's where it is shorter (allow_timeout_override).
    assert a.policy_deadline == NOW + min(model, seconds["timeout"])
    assert a.reject_at == (a.policy_deadline if action is TimeoutAction.REJECT else None)


@pytest.mark.parametrize("action", list(TimeoutAction))
@pytest.mark.parametrize("source", SOURCES)
def test_one_source_alone(source: str, action: TimeoutAction) -> None:
    seconds = {source: SOONER}
    model = seconds.pop("model", None)
    a = settle(policy(model, action), seconds)
    assert a.hard == a.deadline == (None if source == "model" else NOW + SOONER)
    assert a.policy_deadline == (NOW + SOONER if source == "model" else None)
    rejects = source == "model" and action is TimeoutAction.REJECT
    assert a.reject_at == (NOW + SOONER if rejects else None)


def test_no_deadline_at_all() -> None:
    a = settle(policy(), {})
    assert (a.deadline, a.policy_deadline, a.hard, a.reject_at) == (None, None, None, None)


# --- allow_timeout_override ----------------------------------------------------------------------


@pytest.mark.parametrize("action", list(TimeoutAction))
def test_without_override_the_requests_timeout_is_ignored(action: TimeoutAction) -> None:
    a = settle(policy(LATER, action, override=False), {"timeout": SOONER})
    assert a.deadline is None and a.hard is None
    assert a.policy_deadline == NOW + LATER
    assert a.reject_at == (NOW + LATER if action is TimeoutAction.REJECT else None)


@pytest.mark.parametrize("action", list(TimeoutAction))
def test_without_override_the_grpc_deadline_still_counts(action: TimeoutAction) -> None:
    a = settle(policy(LATER + 1, action, override=False), {"grpc": LATER, "timeout": SOONER})
    assert a.deadline == NOW + LATER
    assert a.hard == NOW + LATER
    assert a.policy_deadline == NOW + LATER + 1


def test_without_override_or_default_timeout_only_the_grpc_deadline_counts() -> None:
    assert settle(policy(override=False), {"timeout": SOONER}).hard is None
    assert settle(policy(override=False), {"timeout": SOONER, "grpc": LATER}).hard == NOW + LATER


@pytest.mark.parametrize("action", list(TimeoutAction))
def test_with_override_a_timeout_shortens_the_default_but_never_extends_it(action: TimeoutAction) -> None:
    """With DELAY the shorter timeout demotes sooner; it never refuses the request (it was a hard
    deadline: DELAY with an override refused 4 of 4 requests Triton would have served)."""
    shorter = settle(policy(LATER, action), {"timeout": SOONER})
    assert shorter.policy_deadline == NOW + SOONER and shorter.hard is None
    assert settle(policy(SOONER, action), {"timeout": LATER}).policy_deadline == NOW + SOONER


# --- rows and priority ---------------------------------------------------------------------------


def test_rows_are_checked_against_max_batch_size() -> None:
    assert settle(policy(max_batch_size=4), {}, rows=4).rows == 4
    with pytest.raises(TooManyRows, match="request has 5 rows but the model accepts at most 4"):
        settle(policy(max_batch_size=4), {}, rows=5)
    with pytest.raises(ValueError, match="rows must be at least 1"):
        settle(policy(max_batch_size=4), {}, rows=0)
    assert settle(policy(max_batch_size=0), {}, rows=7).rows == 1  # no batch dimension: one run


@pytest.mark.parametrize(("asked", "level"), [(0, 2), (1, 1), (3, 3), (4, 2), (2**64 - 1, 2)])
def test_priority_zero_or_above_the_levels_is_the_default(asked: int, level: int) -> None:
    assert settle(policy(priority_levels=3, default_priority=2), {}, priority=asked).priority == level


@pytest.mark.parametrize("timeout_s", [0.0, -1.0])
def test_a_timeout_that_is_not_positive_is_a_caller_bug(timeout_s: float) -> None:
    with pytest.raises(ValueError, match="timeout_s must be positive"):
        settle(policy(), {"timeout": timeout_s})


def test_a_negative_priority_is_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="priority must be >= 0"):
        settle(policy(), {}, priority=-1)


def test_the_arrival_is_kept_whichever_deadlines_apply() -> None:
    for pol in (policy(), policy(LATER, TimeoutAction.REJECT), policy(LATER, TimeoutAction.DELAY)):
        assert settle(pol, {"grpc": LATER}).arrival == NOW
