"""The server's bound on calls in progress (`max_concurrent_rpcs`), kept by the server, not grpc.

grpc.aio's own bound (`maximum_concurrent_rpcs`) answers a call past it RESOURCE_EXHAUSTED before
any handler of ours runs: those refusals showed in no statistic, series or log (a tester, session
53: 12 of 20 calls refused, counted nowhere). Every method is registered through
`malformed.add_service`, whose handler takes a slot here as it starts and gives it back as it ends;
a call past the bound is refused at once, its message unread, in grpc's words plus the limit's
name, and counted (`sluiceway_rpcs_refused_total`, a WARNING line at most every LOG_EVERY_S).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

log = logging.getLogger("sluiceway.calls")

REFUSED = "sluiceway_rpcs_refused_total"
OPEN = "sluiceway_rpcs_open"
METRICS = {
    REFUSED: (
        "counter",
        "Calls refused RESOURCE_EXHAUSTED because max_concurrent_rpcs calls were in progress",
    ),
    OPEN: ("gauge", "Calls in progress, each holding one of max_concurrent_rpcs slots"),
}
LOG_EVERY_S = 10.0  # at most one log line this often, with the refusals since the last
# `call_later(delay_s, callback)`: the running loop's, where none is given.
Later = Callable[[float, Callable[[], None]], Any]


class RpcSlots:
    """`limit` calls at once. Plain methods, not a context manager: `take` runs once per call."""

    def __init__(
        self,
        limit: int,
        clock: Callable[[], float] = time.monotonic,
        call_later: Later | None = None,
    ) -> None:
        """A refused stream is answered at once, unread. Read until quiet first, as the stream
        caps' refusals are (calls.read_until_quiet), grpc.aio clients of a burst of 40 refused
        streams read grpc/grpc#36066's INTERNAL more often, not less: 21-25 of 40 against 0 for
        write-then-half-close clients, 16-38 against 5-11 for request-iterator ones."""
        if limit < 1:
            raise ValueError(f"max_concurrent_rpcs must be at least 1, not {limit}")
        self.limit = limit
        self.open = 0
        self.refused = 0
        self._clock = clock
        self._call_later = call_later
        self._logged = 0
        self._logged_at = -math.inf
        self._log_due = False  # a line is due at the end of the period (refusals since the last)
        self._timer: Any = None  # what `call_later` returned for it (a TimerHandle)
        # grpc's own words first: clients and tests that matched them still do.
        self.refusal = (
            f"Concurrent RPC limit exceeded! {limit} calls are in progress on this server "
            f"(max_concurrent_rpcs={limit}); retry after a backoff"
        )

    def take(self) -> bool:
        """A slot for the calling handler (pair with `give` in a finally), or False: refuse it."""
        if self.open >= self.limit:
            self.refused += 1
            now = self._clock()
            if now - self._logged_at >= LOG_EVERY_S:
                self._log(now)
            elif not self._log_due:  # said at the period's end, not left to a refusal after it
                self._log_due = True
                later = self._call_later or asyncio.get_running_loop().call_later
                self._timer = later(self._logged_at + LOG_EVERY_S - now, self._log_due_line)
            return False
        self.open += 1
        return True

    def give(self) -> None:
        self.open -= 1

    def gauge_values(self) -> Iterator[tuple[str, Mapping[str, str], float]]:
        """The counts for /metrics (a gauge source: server/observability/metrics.py)."""
        yield REFUSED, {}, float(self.refused)
        yield OPEN, {}, float(self.open)

    def close(self) -> None:
        """The server stops: the refusals not yet said are logged now."""
        if self._log_due and hasattr(self._timer, "cancel"):
            self._timer.cancel()
        self._log_due_line()

    def _log_due_line(self) -> None:
        self._log_due, self._timer = False, None
        if self.refused > self._logged:
            self._log(self._clock())

    def _log(self, now: float) -> None:
        count = self.refused - self._logged
        log.warning(
            "refused %d %s RESOURCE_EXHAUSTED: %d calls were in progress (max_concurrent_rpcs) "
            "(at most a line every %g s)",
            count,
            "call" if count == 1 else "calls",
            self.limit,
            LOG_EVERY_S,
        )
        self._logged = self.refused
        self._logged_at = now
