"""A ration of log lines: one a period at most, the lines held back counted into the next.

A client's refused inputs (a zero divisor, an index out of range) are answered INVALID_ARGUMENT
and had also been logged at WARNING, a line or two per refused batch with no bound: a hostile
client wrote 5,102 lines (about 1.5 MB) in 5 s through two workers (a tester's). The server's
own failures are still logged each time; a client's mistakes, rationed per model instance.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

EVERY_S = 10.0


class Ration:
    """`take()` from any thread: None when a line is held back now, else how many were since the
    last line logged (0 for the first)."""

    def __init__(self, every_s: float = EVERY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._next = float("-inf")
        self._held = 0

    def take(self) -> int | None:
        with self._lock:
            now = self._clock()
            if now < self._next:
                self._held += 1
                return None
            self._next = now + self.every_s
            held, self._held = self._held, 0
            return held

    def flush(self) -> int:
        """The lines held back since the last logged, counted as said (at a close: nothing follows)."""
        with self._lock:
            held, self._held = self._held, 0
            return held

    def note(self, held: int) -> str:
        """The words a logged line ends with when `held` lines were held back before it."""
        return f" ({held} more like it since the last such line, not logged)" if held else ""


def rationed(ration: Ration | None) -> str | None:
    """How a line to log now ends ("" or the count held back before it), or None to hold it back;
    without a ration every line is logged."""
    if ration is None:
        return ""
    held = ration.take()
    return None if held is None else ration.note(held)
