"""LoopLateness: how late this process has lately run the batcher's timers, for the wake margin.

A batch waiting to grow is woken a margin before the last moment its deadlines allow
(batcher/form.py `WakeMargin`). A fixed 5 ms did not cover a stalled process: 3 of 30 lone 200 ms
requests failed at load average 7. So the batcher records how late each of its timers ran (a
dispatcher's wake-up, a queued request's timer), against when it was due, and adds a decayed
maximum of that to the margin: a loaded process wakes its batches earlier, an idle one goes back
to the fixed margin as the figure fades. Bounded by `cap_s`: a stall of seconds must not make
every batch run alone for long.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class LoopLateness:
    """A decayed maximum of observed timer lateness, in seconds: the largest recent one, halving
    every `half_life_s` without a larger one, never above `cap_s`. Pure: the caller passes `now`."""

    half_life_s: float = 10.0
    cap_s: float = 0.050
    _late_s: float = 0.0
    _at: float = 0.0

    def __post_init__(self) -> None:
        if not self.half_life_s > 0.0:
            raise ValueError(f"half_life_s must be positive, got {self.half_life_s}")
        if not self.cap_s >= 0.0:
            raise ValueError(f"cap_s must be >= 0, got {self.cap_s}")

    def observe(self, late_s: float, now: float) -> None:
        """A timer due at `now - late_s` ran at `now` (negative: early, as uvloop's are: nothing)."""
        late_s = min(late_s, self.cap_s)
        if late_s > self.current(now):
            self._late_s, self._at = late_s, now

    def current(self, now: float) -> float:
        """The lateness to allow for now: the recent maximum, faded by its age."""
        if self._late_s == 0.0:
            return 0.0
        return float(self._late_s * 0.5 ** (max(now - self._at, 0.0) / self.half_life_s))
