"""A count of backend runs begun and ended, shared by every batcher of a server.

What other work ran while something was measured (server/models/lazy.py: a model's load, whose
footprint is the process heap's growth, so another model's run during it adds: its first run's
arena chunk, +1.03 MiB for the demo MLP). Each run adds two integer increments, on the event loop
thread; a reader on that thread sees an exact count.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class RunCount:
    """Backend runs `started` and `ended` (done, failed or abandoned by the watchdog)."""

    started: int = 0
    ended: int = 0

    def mark(self) -> int:
        """Read when a measured window opens; `none_since` at its end says whether it was quiet."""
        return self.ended

    def none_since(self, mark: int) -> bool:
        """No run was under way at any moment since `mark` was read: none in flight then (every
        run begun had ended) and none begun since. (A run whose end the loop has not seen yet
        counts as running: never quiet by mistake.)"""
        return self.started == mark
