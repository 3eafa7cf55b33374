"""A time-based progress bar (tqdm on stderr) and per-step lines; silent with --quiet.

The bar is shown only when stderr is a terminal; the per-step lines go to stderr either way
(unless quiet), so piping stdout keeps just the final table.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any


class Progress:
    def __init__(self, total_s: float, quiet: bool = False) -> None:
        self.quiet = quiet
        self.started = time.monotonic()
        self.bar: Any = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=round(total_s, 1),
                unit="s",
                file=sys.stderr,
                bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s planned, {elapsed} elapsed",
            )

    def tick(self) -> None:
        """Move the bar to the time elapsed (never past the planned total)."""
        if self.bar is not None:
            elapsed = min(self.bar.total, time.monotonic() - self.started)
            self.bar.update(max(0.0, elapsed - self.bar.n))

    def finished(self, line: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.bar is not None:
            self.bar.close()
