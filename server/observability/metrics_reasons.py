"""Why a request failed, in the words /metrics uses: Triton's failure reasons and our rejections.

Called only when a request fails, never on the success path.
"""

from __future__ import annotations

import time

from batcher import errors as batcher_errors
from batcher.stats import ModelStats
from server.errors import ChangedByReload, InvalidRequest, ServiceError

# The queue refused or dropped it: full, overloaded, or its deadline (at admission, in the queue
# or after the run). Triton counts requests its queue rejects or times out as REJECTED.
_REJECTED = (batcher_errors.QueueFull, batcher_errors.DeadlineExceeded)
_INVALID = (InvalidRequest, batcher_errors.TooManyRows)


def failure_reason(exc: BaseException) -> str:
    """Triton's `reason` label of nv_inference_request_failure for a request that raised `exc`."""
    if isinstance(exc, _REJECTED):
        return "REJECTED"
    if isinstance(exc, batcher_errors.RunTimedOut):
        return "BACKEND"
    if isinstance(exc, (ServiceError, batcher_errors.BatcherError)):
        return "OTHER"  # invalid requests, a model or server stopping
    return "BACKEND"  # unexpected: the backend's own exception (answered INTERNAL)


def record_failed(stats: ModelStats, total_ns: int, exc: BaseException) -> None:
    """Count a failed request: ModelStatistics' fail, its failure reason, and the rejections the
    batcher does not count itself (it counts those of its admission: batcher/stats.py)."""
    stats.record_failure(total_ns, failure_reason(exc))
    if isinstance(exc, _INVALID):
        stats.record_rejection("invalid")
    elif isinstance(exc, (batcher_errors.BatcherStopped, ChangedByReload)):
        stats.record_rejection("unavailable")


# What a request cut by its gRPC deadline during compute counts as (the caller got
# DEADLINE_EXCEEDED from gRPC; counted CANCELED before, and its span said CANCELLED).
CALL_DEADLINE_PASSED = batcher_errors.DeadlineExceeded(
    "deadline exceeded while the request was being computed"
)

# A client's gRPC deadline fires on its own clock, from when it sent the call: it cancels the call
# (RST_STREAM) before the server's copy of the deadline, counted from when the call arrived, by the
# call's transit time. A cancellation this close to the deadline is taken as the deadline (with 1 ms
# of slack, a loaded machine's transit made it a cancel, and the test counting it failed once).
DEADLINE_SLACK_S = 0.05


def past_deadline(deadline: float | None, now: float | None = None) -> bool:
    """Whether a call's gRPC deadline (absolute time.monotonic()) has passed at `now` (default:
    now), or is close enough that the caller's own timer, not the caller, cut it (DEADLINE_SLACK_S)."""
    at = time.monotonic() if now is None else now
    return deadline is not None and at >= deadline - DEADLINE_SLACK_S


def record_cut(stats: ModelStats, total_ns: int, deadline: float | None, now: float | None = None) -> None:
    """Count a request whose call ended while it was queued or running: at its deadline (gRPC cut
    it) a failure like any deadline miss (fail, REJECTED), else the caller went away (CANCELED)."""
    if past_deadline(deadline, now):
        record_failed(stats, total_ns, CALL_DEADLINE_PASSED)
    else:
        stats.record_canceled()


def record_ensemble_outcome(stats: ModelStats, exc: BaseException) -> None:
    """Count an ensemble request that a step's error `exc` ended in the ensemble's own deadline
    outcome (its steps count theirs in their own series): a step shed (Overloaded) -> `shed`; a
    step refused or dropped unrun for its deadline (cannot be met, expired in its queue or its
    sequence's turn, a REJECT queue timeout) -> `expired`, since the ensemble request itself was
    under way; computed past it -> `late`. Ensemble requests had counted only `on_time`."""
    if isinstance(exc, batcher_errors.Overloaded):
        stats.shed += 1
    elif isinstance(exc, batcher_errors.ComputedLate):
        stats.late += 1
    elif isinstance(exc, batcher_errors.DeadlineExceeded):
        stats.expired += 1
