"""batcher/lateness.py: survivors of the 2026-12-05 mutation run (s48): the bounds `__post_init__`
accepts, a lateness of exactly 1 s, and a figure seen again at an earlier clock reading."""

from __future__ import annotations

import pytest

from batcher.lateness import LoopLateness


def test_a_half_life_under_a_second_and_a_zero_cap_are_accepted() -> None:
    """Any positive half-life works (not only above 1 s), and a cap of 0 turns the figure off
    (`cap_s >= 0`): both must construct."""
    assert LoopLateness(half_life_s=0.5).half_life_s == 0.5
    off = LoopLateness(cap_s=0.0)
    off.observe(0.3, now=1.0)
    assert off.current(1.0) == 0.0


def test_a_negative_cap_is_refused_with_its_reason() -> None:
    with pytest.raises(ValueError, match=r"cap_s must be >= 0, got -0\.1"):
        LoopLateness(cap_s=-0.1)


def test_a_lateness_of_exactly_one_second_is_kept() -> None:
    """Only a figure of 0 is short-cut to 0 in `current`; a 1 s one (under a cap of 2 s) is kept and
    fades: halved after one half-life."""
    lateness = LoopLateness(half_life_s=10.0, cap_s=2.0)
    lateness.observe(1.0, now=0.0)
    assert lateness.current(0.0) == 1.0
    assert lateness.current(10.0) == 0.5


def test_an_equal_figure_read_at_an_earlier_time_does_not_restart_the_fading() -> None:
    """Two timers of one loop turn may report out of order: the later reading first. Both capped at
    `cap_s`, the second is no larger than the figure now (equal), so the figure keeps its own time;
    taking it (`>=`) would move its time back and fade it sooner."""
    lateness = LoopLateness(half_life_s=10.0, cap_s=0.05)
    lateness.observe(0.3, now=20.0)  # capped at 0.05
    lateness.observe(0.2, now=10.0)  # capped at 0.05 too, read 10 s before the first
    assert lateness.current(30.0) == 0.025  # one half-life after 20.0, not two after 10.0
