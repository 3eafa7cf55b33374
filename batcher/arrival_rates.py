"""ArrivalRates: rows admitted per second at each priority level, for the forecast of lower levels.

A request admitted at a lower level waits behind the queue as it is now and behind the rows of
higher levels that arrive before its batch is formed: formation takes level by level. Forecast on
the queue alone, 66-81% of the admitted low-priority requests under a steady stream of
priority-1 work were dropped unrun at ~91% of their deadline (a tester, session 53).

Each level's rate decays with a time constant `tau_s` (an exponentially weighted count: for
steady arrivals its mean is the arrival rate). What a level is expected to send leaves its latest
request out: one request is no stream (one priority-1 request, taken for a stream of a row a
second, had a priority-2 request 4 s from its deadline refused on rows that never came); nor is a
level that has been silent for several of its own gaps (`SILENT_GAPS`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

SILENT_GAPS = 3.0  # a stream's rate is at most this many rows over the time since its last one


class _Level(NamedTuple):
    rate: float  # rows per second as of `at`, the latest request's rows included
    at: float  # when the latest request came
    latest: int  # its rows


class ArrivalRates:
    """Rows per second admitted at each priority level, as recently seen."""

    def __init__(self, tau_s: float = 1.0) -> None:
        self._tau_s = tau_s
        self._levels: dict[int, _Level] = {}

    def arrived(self, level: int, rows: int, now: float) -> None:
        """`rows` rows were admitted at `level` at `now`."""
        seen = self._levels.get(level)
        rate = 0.0 if seen is None else self._faded(seen.rate, now - seen.at)
        self._levels[level] = _Level(rate + rows / self._tau_s, now, rows)

    def before(self, level: int, now: float) -> float:
        """Rows per second the levels formation serves before `level`'s are expected to send."""
        return sum(self._expected_rate(seen, now) for lvl, seen in self._levels.items() if lvl < level)

    def expected(self, level: int, now: float, within_s: float) -> float:
        """Rows the levels before `level`'s are expected to add within `within_s` seconds."""
        return self.before(level, now) * within_s

    def _expected_rate(self, seen: _Level, now: float) -> float:
        """A level's rate without its latest request, faded to `now`, and at most `SILENT_GAPS`
        rows over the silence since that request (a stream that has sent nothing for several of
        its own gaps has slowed or stopped). Faded alone, a burst of 20 priority-1 rows, answered
        in half a second, went on counting as 20 rows a second ahead of priority-2 requests for
        a second more: 15 of 48 refused that an idle model then answered (a tester, session 54)."""
        age_s = max(0.0, now - seen.at)
        rate = self._faded(max(0.0, seen.rate - seen.latest / self._tau_s), age_s)
        return rate if age_s <= 0.0 else min(rate, SILENT_GAPS / age_s)

    def _faded(self, rate: float, age_s: float) -> float:
        return rate * math.exp(-max(0.0, age_s) / self._tau_s)
