"""ArrivalRates: rows admitted per second at each priority level, for the forecast of lower levels.

A request admitted at a lower level waits behind the queue as it is now and behind the rows of
higher levels that arrive before its batch is formed: formation takes level by level. Forecast on
the queue alone, 66-81% of the admitted low-priority requests under a steady stream of
priority-1 work were dropped unrun at ~91% of their deadline (a tester, session 53).

Each level's rate decays with a time constant `tau_s` (an exponentially weighted count: for
steady arrivals its mean is the arrival rate). What a level is expected to send leaves out the
requests of its latest instant (those within `INSTANT_S` of its first): one request, or a burst
sent at once, is no stream; they are queued, and counted there. Taken for streams, one
priority-1 request had a priority-2 request 4 s from its deadline refused on rows that never
came, and after a burst of 20 priority-1 requests 14 of 18 priority-2 requests with 1 s deadlines
were refused that were then answered in 0.4-0.6 s. Nor is a level that has been silent for several
of its own gaps a stream (`SILENT_GAPS`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

INSTANT_S = 0.01  # requests this close to their instant's first arrive together: a burst, not a stream
SILENT_GAPS = 3.0  # a stream's rate is at most this many rows over the time since its last one


class _Level(NamedTuple):
    rate: float  # rows per second as of `at`, the latest instant's rows included
    at: float  # when the latest request came
    instant: float  # when the latest instant began
    instant_rows: int  # the rows that came in it


class ArrivalRates:
    """Rows per second admitted at each priority level, as recently seen."""

    def __init__(self, tau_s: float = 1.0) -> None:
        self._tau_s = tau_s
        self._levels: dict[int, _Level] = {}

    def arrived(self, level: int, rows: int, now: float) -> None:
        """`rows` rows were admitted at `level` at `now`."""
        seen = self._levels.get(level)
        rate = rows / self._tau_s + (0.0 if seen is None else self._faded(seen.rate, now - seen.at))
        if seen is not None and now - seen.instant <= INSTANT_S:
            self._levels[level] = _Level(rate, now, seen.instant, seen.instant_rows + rows)
        else:
            self._levels[level] = _Level(rate, now, now, rows)

    def before(self, level: int, now: float) -> float:
        """Rows per second the levels formation serves before `level`'s are expected to send."""
        return sum(self._expected_rate(seen, now) for lvl, seen in self._levels.items() if lvl < level)

    def expected(self, level: int, now: float, within_s: float) -> float:
        """Rows the levels before `level`'s are expected to add within `within_s` seconds."""
        return self.before(level, now) * within_s

    def _expected_rate(self, seen: _Level, now: float) -> float:
        """A level's rate without its latest instant's requests, faded to `now`, and at most
        `SILENT_GAPS` rows over the silence since its latest request (a stream that has sent nothing
        for several of its own gaps has slowed or stopped: faded alone, 20 priority-1 rows sent in
        two instants went on counting as a stream for a second after they were answered)."""
        age_s = max(0.0, now - seen.at)
        rate = self._faded(max(0.0, seen.rate - seen.instant_rows / self._tau_s), age_s)
        return rate if age_s <= 0.0 else min(rate, SILENT_GAPS / age_s)

    def _faded(self, rate: float, age_s: float) -> float:
        return rate * math.exp(-max(0.0, age_s) / self._tau_s)
