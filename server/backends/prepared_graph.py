"""What a model version's sessions are made from, decided by its first instance and shared with
the other instances of the same load.

The division guard (int_division_guard.py) and the per-row quantization (row_quantization.py)
parse and rewrite the model at load. Made per instance, a version of `count: 4` parsed it four
times and logged each WARNING four times; the first instance's outcome (the rewritten bytes that
loaded, or the file after a rewrite that did not) now serves the others of its load, on the same
providers. The bytes are held only until the load's last instance is made; a replacement made
later (the watchdog's) prepares its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.backends.int_division_guard import DivisionGuard


@dataclass(frozen=True, slots=True)
class PreparedGraph:
    guard: DivisionGuard | None  # the guarded model (its bytes) that loaded, or None
    rewritten: bytes | None  # else the per-row model's bytes that loaded, or None: the file
