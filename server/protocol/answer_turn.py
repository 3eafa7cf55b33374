"""preserve_ordering's wait for the answers ahead, bounded by the request's own deadline.

An ordered model's answer leaves after the answers of the requests that arrived before it
(unary_order.py across unary calls, stream_order.py within a stream). One computed before those
waits for them, never past its own hard deadline (the earlier of its gRPC deadline and `timeout`):
then it is answered DEADLINE_EXCEEDED at once and counted `late` (computed, not in time), as a run
that ends late is; its success is counted only once its turn has come. A computed request held
past a 250 ms `timeout` behind a 300 ms run had been answered OK at ~310 ms, and one whose gRPC
deadline cut it while held had been counted a success and `on_time` (4 of 4 each).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from batcher.errors import ComputedLate, ComputedThenCancelled
from batcher.stats import ModelStats
from server.observability.metrics_reasons import CALL_DEADLINE_PASSED, past_deadline, record_failed
from server.protocol.stream_order import Before


class LateForTurn(ComputedLate):
    """Computed in time, but its deadline passed while its answer waited for the answers of the
    requests before it (preserve_ordering): answered DEADLINE_EXCEEDED at its deadline, not held
    for its turn (the answers after it still wait for those before it)."""

    default_message = (
        "deadline exceeded while the answer waited for the answers of earlier requests (preserve_ordering)"
    )


async def wait_turn(before: Before, hard: float | None) -> None:
    """Return once `before` (the answer ahead) is set; LateForTurn if hard deadline `hard`
    (absolute time.monotonic(); None: none) passes first."""
    if before.is_set():
        return
    if hard is None:
        await before.wait()
        return
    try:
        await asyncio.wait_for(before.wait(), max(0.0, hard - time.monotonic()))
    except asyncio.TimeoutError:  # not the builtin on Python 3.10
        raise LateForTurn() from None


def count_missed(
    stats: ModelStats, total_ns: int, exc: BaseException, call_deadline: float | None
) -> BaseException:
    """Count a computed answer that `exc` ended while it waited for its turn, in the statistics a
    success would have been counted in; the exception to raise for it. Past its deadline (LateForTurn,
    or gRPC cut the call there) `late` and a failure; its caller gone before that, a success (it was
    computed: ComputedThenCancelled, as a caller gone once its run answered)."""
    cut = isinstance(exc, asyncio.CancelledError)
    if isinstance(exc, LateForTurn) or (cut and past_deadline(call_deadline)):
        stats.late += 1
        record_failed(stats, total_ns, exc if isinstance(exc, LateForTurn) else CALL_DEADLINE_PASSED)
        return exc
    if cut and not isinstance(exc, ComputedThenCancelled):
        stats.record_success(total_ns)
        return ComputedThenCancelled()
    return exc


def when_set(before: Before, then: Callable[[], None]) -> None:
    """Call `then` once `before` is set: an answer sent out of its turn (LateForTurn, or its caller
    gone) lets the answers after it go only after those before it."""
    if before.is_set():
        then()
        return
    waiter = asyncio.ensure_future(before.wait())
    waiter.add_done_callback(lambda _: then())
