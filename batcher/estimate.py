"""Predicts how long a backend run of a given number of rows takes, from runs already seen.

One EWMA per row bucket, buckets being (2**(k-1), 2**k] so the usual power-of-two batch sizes sit
at the top of theirs. A bucket never seen is extrapolated from the nearest smaller bucket seen, in
proportion to rows (a slight over-estimate, since batching makes rows cheaper: a lower bound here
admitted requests that then expired in the queue, and formed batches that finished late); with no
smaller bucket seen, 0.0: an unknown cost never rejects a request early.

A prediction is the mean plus `deviations` times the mean absolute deviation (as TCP estimates
its retransmission timeout): on a machine shared with other work, run times vary, and a batch
predicted by its mean alone finishes after its deadline about half the time it is cut close.

Estimates fade with age (half-life `half_life_s`). Without that, one slow run (a cold start, a
pause) could predict more than every request's slack: all would be rejected, nothing would run,
and no new observation would ever correct the estimate. Fading guarantees requests get through
again and refresh it; under load observations are fresh and fading is negligible.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class _Seen:
    seconds: float
    rows: float  # the runs' rows (EWMA, like seconds): the scale for extrapolating to more rows
    deviation: float  # EWMA of |run seconds - mean|
    at: float  # when last observed, clock seconds


class ServiceTimeEstimator:
    """Pure: fed with observed (rows, seconds, at), answers predicted seconds for a row count."""

    def __init__(self, alpha: float = 0.2, half_life_s: float = 5.0, deviations: float = 2.0) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        if not half_life_s > 0.0:
            raise ValueError(f"half_life_s must be positive, got {half_life_s}")
        if not deviations >= 0.0:
            raise ValueError(f"deviations must be >= 0, got {deviations}")
        self._deviations = deviations
        self._alpha = alpha
        self._half_life_s = half_life_s
        self._seen: dict[int, _Seen] = {}

    @staticmethod
    def bucket(rows: int) -> int:
        """1 -> 0, 2 -> 1, 3..4 -> 2, 5..8 -> 3, 9..16 -> 4, ..."""
        return (max(rows, 1) - 1).bit_length()

    def _freshness(self, seen: _Seen, now: float) -> float:
        return float(0.5 ** (max(now - seen.at, 0.0) / self._half_life_s))

    def observe(self, rows: int, seconds: float, now: float) -> None:
        """Record that a run of `rows` rows took `seconds`, observed at clock time `now`."""
        seconds = max(seconds, 0.0)
        b = self.bucket(rows)
        old = self._seen.get(b)
        if old is None:
            self._seen[b] = _Seen(seconds, max(rows, 1), 0.0, now)  # as is: blending with 0 under-predicts
            return
        # A stale estimate weighs less against the new sample.
        weight = 1.0 - (1.0 - self._alpha) * self._freshness(old, now)
        old.deviation += weight * (abs(seconds - old.seconds) - old.deviation)
        old.seconds += weight * (seconds - old.seconds)
        old.rows += weight * (max(rows, 1) - old.rows)
        old.at = now

    def predict(self, rows: int, now: float) -> float:
        """Predicted seconds for a run of `rows` rows at clock time `now` (0.0 when unknown)."""
        if not self._seen:
            return 0.0
        own = self.bucket(rows)
        for b in range(own, -1, -1):
            seen = self._seen.get(b)
            if seen is not None:
                scale = 1.0 if b == own else max(rows, 1) / seen.rows
                expected = seen.seconds + self._deviations * seen.deviation
                return expected * scale * self._freshness(seen, now)
        return 0.0
