"""batcher/stats.py: survivors of the 2026-12-05 mutation run (s48): what `record_refusal` puts in
the deadline-left histogram when no time was left (the default, or a deadline already passed)."""

from __future__ import annotations

from batcher.errors import DeadlineExceeded
from batcher.stats import ModelStats


def test_a_deadline_refusal_without_time_left_observes_zero() -> None:
    """The sequence batcher's turn refusals pass no `left_ns` (the default: none left), and a deadline
    already past gives a negative one: each is observed as 0 ns, in the first bucket, adding nothing
    to the total. A default of 1, or a floor of 1, added 1 ns per refusal."""
    stats = ModelStats()
    stats.record_refusal(DeadlineExceeded(), False)
    stats.record_refusal(DeadlineExceeded(), False, 0)
    stats.record_refusal(DeadlineExceeded(), False, -2_000_000)
    hist = stats.deadline_left_hist
    assert (hist.count, hist.total, hist.counts[0]) == (3, 0, 3)
    assert stats.rejections["deadline"] == 3
