"""batcher/log_ration.py: survivors of the 2026-12-05 mutation run (s48): `rationed`, the form the
callers use, carries the count of lines held back into the next line logged."""

from __future__ import annotations

from batcher.log_ration import Ration, rationed


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rationed_ends_the_next_logged_line_with_the_count_held_back() -> None:
    """The first line is logged bare, the next two held back (None), and the line a period later
    says that 2 were: passing it nothing (`note(None)`) dropped that count from every line."""
    clock = Clock()
    ration = Ration(10.0, clock)
    assert rationed(ration) == ""
    assert [rationed(ration), rationed(ration)] == [None, None]
    clock.now += 10.0
    assert rationed(ration) == " (2 more like it since the last such line, not logged)"
    assert rationed(None) == ""  # without a ration every line is logged, bare
