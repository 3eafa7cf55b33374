"""Automatic rollback, the pure part: per-window figures of each version and the verdict.

Nothing here reads a clock or the server: the caller passes `now` and the cumulative figures it
read (batcher/stats.py's counters), so the decision is tested with a fake clock and made-up counts.
Windows tumble: each one's figures are the difference between two cumulative readings.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from batcher.stats import LATENCY_BOUNDS_NS
from server.models.traffic import RollbackThresholds


@dataclass(frozen=True, slots=True)
class Figures:
    """A version's answered requests: successes, errors it caused, requests that missed their
    deadline (shed for it, expired in the queue, or computed too late), and the successes' latency
    as counts per bucket of LATENCY_BOUNDS_NS (the last bucket: above every bound). `source`: what
    they were read from, a version's requests or its shadow copies (server/models/rollout.py)."""

    ok: int = 0
    errors: int = 0
    latency: tuple[int, ...] = ()
    missed: int = 0
    source: str = "requests"

    @property
    def requests(self) -> int:
        return self.ok + self.errors + self.missed

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def minus(self, earlier: Figures) -> Figures:
        before = earlier.latency or (0,) * len(self.latency)
        return Figures(
            self.ok - earlier.ok,
            self.errors - earlier.errors,
            tuple(now - then for now, then in zip(self.latency, before, strict=True)),
            self.missed - earlier.missed,
            self.source,
        )

    def quantile_s(self, q: float) -> float | None:
        """The upper bound (seconds) of the bucket holding the q-quantile of the latency of the
        successes and of the requests that missed their deadline (those above every bound: a
        version too slow to finish any request in time had no latency at all); inf when it is
        above every bound; None without either."""
        counts = list(self.latency or (0,) * (len(LATENCY_BOUNDS_NS) + 1))
        counts[-1] += self.missed
        return quantile_s(counts, q)


def quantile_s(counts: Sequence[int], q: float, bounds: Sequence[int] = LATENCY_BOUNDS_NS) -> float | None:
    total = sum(counts)
    if total == 0:
        return None
    rank = math.ceil(q * total)
    running = 0
    for index, count in enumerate(counts):
        running += count
        if running >= rank:
            return bounds[index] / 1e9 if index < len(bounds) else math.inf
    return math.inf


def decide(stable: Figures, candidate: Figures, t: RollbackThresholds) -> str | None:
    """Why the candidate must be rolled back after this window, or None: not (or not enough
    requests on either side to say)."""
    if stable.requests < t.min_requests or candidate.requests < t.min_requests:
        return None
    if candidate.error_rate > stable.error_rate + t.error_margin:
        return (
            f"error rate {candidate.error_rate:.1%} over {candidate.requests} requests vs the stable "
            f"version's {stable.error_rate:.1%} (rollback_error_margin {t.error_margin:g})"
        )
    ours, theirs = candidate.quantile_s(0.99), stable.quantile_s(0.99)
    if ours is not None and theirs is not None and ours > theirs * (1 + t.latency_margin):
        return (
            f"p99 latency <= {_ms(ours)} vs the stable version's <= {_ms(theirs)} "
            f"(rollback_latency_margin {t.latency_margin:g})"
        )
    return None


def _ms(seconds: float) -> str:
    return "inf" if math.isinf(seconds) else f"{seconds * 1000:g} ms"


@dataclass(frozen=True, slots=True)
class WindowReport:
    """One closed window: each version's figures in it and the candidates to roll back (why)."""

    seconds: float
    figures: Mapping[int, Figures]
    verdicts: Mapping[int, str]


class RollbackMonitor:
    """Tumbling windows of `window_s` over cumulative figures; verdicts when thresholds are set."""

    def __init__(self, window_s: float, now: float, current: Mapping[int, Figures]) -> None:
        self.window_s = window_s
        self._start = now
        self._base = dict(current)

    def due(self, now: float) -> bool:
        return now - self._start >= self.window_s

    def close(
        self,
        now: float,
        current: Mapping[int, Figures],
        stable: int,
        candidates: Iterable[int],
        thresholds: RollbackThresholds | None,
    ) -> WindowReport:
        """End the window at `now` (the next one starts there) and judge each candidate in it.
        A version without a reading of the same source at the window's start has no figures for it
        (not judged)."""
        # A version whose figures changed source in the window (a shadow candidate given weight, or
        # weighted one going back to shadow) has none for it: one source minus the other went negative.
        base = self._base
        figures = {
            v: f.minus(base[v]) for v, f in current.items() if v in base and base[v].source == f.source
        }
        seconds = now - self._start
        self._base, self._start = dict(current), now
        verdicts: dict[int, str] = {}
        if thresholds is not None and stable in figures:
            for version in candidates:
                if version != stable and version in figures:
                    reason = decide(figures[stable], figures[version], thresholds)
                    if reason is not None:
                        verdicts[version] = reason
        return WindowReport(seconds, figures, verdicts)
