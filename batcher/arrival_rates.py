"""ArrivalRates: rows admitted per second at each priority level, for the forecast of lower levels.

A request admitted at a lower level waits behind the queue as it is now and behind the rows of
higher levels that arrive before its batch is formed: formation takes level by level. Forecast on
the queue alone, 66-81% of the admitted low-priority requests under a steady stream of
priority-1 work were dropped unrun at ~91% of their deadline (a tester, session 53).

Each level's rate decays with a time constant `tau_s` (an exponentially weighted count: for
steady arrivals its mean is the arrival rate). `expected` never foresees more rows than that count,
the rows of about the last `tau_s`: one priority-1 request, taken for a stream of one row a second,
had a priority-2 request 4 s from its deadline refused on rows that never came.
"""

from __future__ import annotations

import math


class ArrivalRates:
    """Rows per second admitted at each priority level, as recently seen."""

    def __init__(self, tau_s: float = 1.0) -> None:
        self._tau_s = tau_s
        self._rates: dict[int, tuple[float, float]] = {}  # level: (rows per second, as of when)

    def arrived(self, level: int, rows: int, now: float) -> None:
        """`rows` rows were admitted at `level` at `now`."""
        rate, at = self._rates.get(level, (0.0, now))
        self._rates[level] = (self._faded(rate, now - at) + rows / self._tau_s, now)

    def before(self, level: int, now: float) -> float:
        """Rows per second admitted at the levels formation serves before `level`'s."""
        return sum(self._faded(rate, now - at) for lvl, (rate, at) in self._rates.items() if lvl < level)

    def expected(self, level: int, now: float, within_s: float) -> float:
        """Rows the levels before `level`'s are expected to add within `within_s` seconds, at most
        as many as arrived over about the last `tau_s`."""
        return self.before(level, now) * min(within_s, self._tau_s)

    def _faded(self, rate: float, age_s: float) -> float:
        return rate * math.exp(-max(0.0, age_s) / self._tau_s)
