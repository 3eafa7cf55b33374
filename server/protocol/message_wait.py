"""Calls waiting for their request message: bounded in time and per peer host.

A method of one request reads its message in the handler (malformed.py), and the call holds one of
`max_concurrent_rpcs` slots from the moment grpc accepts it. A client that opens calls and never
sends their message (nor half-closes) held every slot with no time limit: health checks and every
other client were answered RESOURCE_EXHAUSTED "Concurrent RPC limit exceeded!" (RELIABILITY.md,
twenty-seventh session). Here such a call is ended once it has waited `timeout_s`
(DEADLINE_EXCEEDED), and a peer host's calls that have waited longer than GRACE_S beyond
`per_peer` are ended, oldest first (RESOURCE_EXHAUSTED), as the stream caps bound streams.

The request path pays a dict insert and a delete per call; the look at the calls runs on a timer
(every SWEEP_S while any call waits), not per call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping

import grpc

from server.protocol.calls import peer_host
from server.settings import ServerSettings

log = logging.getLogger(__name__)

# A call whose message has not come after this long counts against its peer host's bound (a
# message normally arrives with the call's headers: microseconds).
GRACE_S = 1.0
SWEEP_S = 0.5


class Wait:
    """One call waiting for its message; `why` is set when the sweep ends it (code, message)."""

    __slots__ = ("context", "old", "since", "task", "why")

    def __init__(self, context: grpc.aio.ServicerContext, task: asyncio.Task[object] | None) -> None:
        self.context = context
        self.since = time.monotonic()
        self.task = task
        self.why: tuple[grpc.StatusCode, str] | None = None
        self.old = False  # past the grace at an earlier look


ENDED = "sluiceway_calls_ended_waiting_for_message_total"
METRICS = {
    ENDED: (
        "counter",
        "Calls the server ended while they waited for their request message: reason timeout "
        "(request_message_timeout_s) or per_peer (max_calls_awaiting_message_per_peer)",
    ),
}
LOG_EVERY_S = 10.0  # at most one log line this often, with the counts since the last


class MessageWaits:
    """The server's calls waiting for their request message. `timeout_s` 0: no time limit.
    `pressure_at`: a peer host's bound applies only while more calls than this (in all) have
    waited past the grace; below it a slow link's calls (many through one proxy) wait on, up to
    `timeout_s` (0: always applies)."""

    def __init__(self, timeout_s: float, per_peer: int, pressure_at: int = 0) -> None:
        self._timeout_s = timeout_s
        self._per_peer = per_peer
        self._pressure_at = pressure_at
        self._waits: set[Wait] = set()
        self._timer: asyncio.TimerHandle | None = None
        self.ended = {"timeout": 0, "per_peer": 0}  # calls the look ended, by reason (/metrics)
        self._logged = dict(self.ended)
        self._logged_at = float("-inf")

    @property
    def count(self) -> int:
        """Calls taken by a handler that still wait for their message (the stream pace counts
        them as taken: they wait for their client, not for the event loop)."""
        return len(self._waits)

    def gauge_values(self) -> Iterator[tuple[str, Mapping[str, str], float]]:
        """The counts for /metrics (a gauge source: server/observability/metrics.py)."""
        for reason, count in self.ended.items():
            yield ENDED, {"reason": reason}, float(count)

    def begin(self, context: grpc.aio.ServicerContext) -> Wait:
        """The calling handler starts to wait for its call's message; pair with `end`."""
        wait = Wait(context, asyncio.current_task())
        self._waits.add(wait)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(SWEEP_S, self._sweep)
        return wait

    def end(self, wait: Wait) -> None:
        self._waits.discard(wait)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _sweep(self) -> None:
        self._timer = None
        now = time.monotonic()
        by_host: dict[str, list[Wait]] = defaultdict(list)
        old = 0
        for wait in list(self._waits):
            waited = now - wait.since
            if wait.why is not None or waited < GRACE_S:
                continue
            if not wait.old:
                # Ended only at a later look: after the loop was held (a stall ages every call),
                # a message that had come is read in the loop's next turns, before that look.
                wait.old = True
                continue
            if self._timeout_s and waited >= self._timeout_s:
                self._end(
                    wait,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"the request message did not arrive within {self._timeout_s:g} s of the call's "
                    "start (request_message_timeout_s)",
                    "timeout",
                )
                continue
            old += 1
            by_host[peer_host(wait.context.peer())].append(wait)
        if old > self._pressure_at:
            for host, waits in by_host.items():
                if len(waits) > self._per_peer:
                    waits.sort(key=lambda w: w.since)
                    for wait in waits[: len(waits) - self._per_peer]:
                        self._end(
                            wait,
                            grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"too many calls from {host} waiting over {GRACE_S:g} s for their request "
                            f"message (max_calls_awaiting_message_per_peer={self._per_peer})",
                            "per_peer",
                        )
        if self.ended != self._logged and now - self._logged_at >= LOG_EVERY_S:
            self._log(now)
        if self._waits:
            self._timer = asyncio.get_running_loop().call_later(SWEEP_S, self._sweep)

    def _end(self, wait: Wait, code: grpc.StatusCode, message: str, reason: str) -> None:
        """End a waiting call: its handler's read is cancelled, and the handler answers `why`."""
        if wait.task is None:
            return
        wait.why = (code, message)
        wait.task.cancel()
        self.ended[reason] += 1

    def _log(self, now: float) -> None:
        timeout = self.ended["timeout"] - self._logged["timeout"]
        per_peer = self.ended["per_peer"] - self._logged["per_peer"]
        log.warning(
            "ended %d calls waiting for their request message: %d past request_message_timeout_s "
            "(%g s), %d beyond max_calls_awaiting_message_per_peer (%d) (at most a line every %g s)",
            timeout + per_peer, timeout, self._timeout_s, per_peer, self._per_peer, LOG_EVERY_S,
        )  # fmt: skip
        self._logged = dict(self.ended)
        self._logged_at = now


def message_waits_for(settings: ServerSettings) -> MessageWaits:
    """The server's: its peer-host bound applies while over a quarter of `max_concurrent_rpcs`
    are calls waiting past the grace (a slowloris's thousands, not a slow proxy's hundred)."""
    return MessageWaits(
        settings.request_message_timeout_s,
        settings.max_calls_awaiting_message_per_peer,
        pressure_at=settings.max_concurrent_rpcs // 4,
    )


async def read_message(context: grpc.aio.ServicerContext, waits: MessageWaits | None) -> object:
    """`context.read()`, ended with the sweep's status when the call waited too long."""
    if waits is None:
        return await context.read()
    wait = waits.begin(context)
    try:
        return await context.read()
    except asyncio.CancelledError:
        if wait.why is None:
            raise  # grpc's own cancel: the client went, or the server stops
        task = asyncio.current_task()
        if task is not None and hasattr(task, "uncancel"):  # 3.11+: this cancel is answered here
            task.uncancel()
        await context.abort(*wait.why)
        raise  # abort raises; never reached
    finally:
        waits.end(wait)
