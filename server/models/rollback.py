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
    deadline for its own queue or run (shed for the work queued ahead, expired in its queue, or
    computed too late), and the successes' latency as counts per bucket of LATENCY_BOUNDS_NS (the
    last bucket: above every bound). `source`: what they were read from, a version's requests or
    its shadow copies (server/models/rollout.py). `refused`: requests refused at admission for
    their deadline alone (past, or shorter than the run), counted per bucket of the time they had
    left; whose they are depends on the stable version (`charged`)."""

    ok: int = 0
    errors: int = 0
    latency: tuple[int, ...] = ()
    missed: int = 0
    source: str = "requests"
    refused: tuple[int, ...] = ()

    @property
    def requests(self) -> int:
        return self.ok + self.errors + self.missed

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def minus(self, earlier: Figures) -> Figures:
        return Figures(
            self.ok - earlier.ok,
            self.errors - earlier.errors,
            _minus(self.latency, earlier.latency),
            self.missed - earlier.missed,
            self.source,
            _minus(self.refused, earlier.refused),
        )

    def charged(self, stable_p99_s: float | None) -> Figures:
        """These figures with the deadline refusals that had more time left than the stable
        version's p99 counted as missed: the stable version answered 99% of its requests sooner,
        so this version was too slow for them. The others (a deadline already past, or shorter
        than the stable version's own run) no version could meet: the caller's, not held against
        this version (a client sending 1 us timeouts rolled a healthy canary back)."""
        if stable_p99_s is None or math.isinf(stable_p99_s) or not self.refused:
            return self
        bound_ns = stable_p99_s * 1e9
        # Bucket i holds times left in (bounds[i - 1], bounds[i]]: count it when all are above.
        extra = sum(n for i, n in enumerate(self.refused) if i > 0 and LATENCY_BOUNDS_NS[i - 1] >= bound_ns)
        if not extra:
            return self
        return Figures(self.ok, self.errors, self.latency, self.missed + extra, self.source, self.refused)

    def quantile_s(self, q: float) -> float | None:
        """The upper bound (seconds) of the bucket holding the q-quantile of the latency of the
        successes and of the requests that missed their deadline (those above every bound: a
        version too slow to finish any request in time had no latency at all); inf when it is
        above every bound; None without either."""
        counts = list(self.latency or (0,) * (len(LATENCY_BOUNDS_NS) + 1))
        counts[-1] += self.missed
        return quantile_s(counts, q)


def _minus(now: tuple[int, ...], then: tuple[int, ...]) -> tuple[int, ...]:
    before = then or (0,) * len(now)
    return tuple(a - b for a, b in zip(now, before, strict=True))


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
    theirs = stable.quantile_s(0.99)
    candidate = candidate.charged(theirs)
    if stable.requests < t.min_requests or candidate.requests < t.min_requests:
        return None
    if candidate.error_rate > stable.error_rate + t.error_margin:
        return (
            f"error rate {candidate.error_rate:.1%} over {candidate.requests} requests vs the stable "
            f"version's {stable.error_rate:.1%} (rollback_error_margin {t.error_margin:g})"
        )
    ours = candidate.quantile_s(0.99)
    if (
        ours is not None
        and theirs is not None
        and ours > theirs * (1 + t.latency_margin)
        and ours - theirs > t.latency_floor_s
    ):
        return (
            f"p99 latency <= {_ms(ours)} vs the stable version's <= {_ms(theirs)} "
            f"(rollback_latency_margin {t.latency_margin:g}, "
            f"rollback_latency_floor_ms {t.latency_floor_s * 1000:g})"
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
