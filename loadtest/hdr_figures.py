"""An HdrHistogram's percentiles, mean and CDF read from its counts array with numpy.

The same numbers as hdrh's own `get_mean_value` and recorded iterator (tests/unit/test_hdr_figures.py
compares them), without their Python walk over all ~23,500 counters of our 1 us .. 1 h histograms:
hdrh took ~35-50 ms for each mean or CDF, ~0.25 s a results entry; this takes well under a
millisecond. Percentiles are the nearest rank (ceil), not hdrh's rank rounded half-up, which
under-reported a tail: 11 of 1060 latencies at 90 ms (1.04%) had read p99 = 1 ms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import numpy.typing as npt
from hdrh.histogram import HdrHistogram

Ints = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Recorded:
    """The non-empty counters of one histogram, in index order (so values ascend)."""

    lowest: Ints  # the lowest value each counter stands for (hdrh's get_value_from_index)
    highest: Ints  # the highest value equivalent to it (get_highest_equivalent_value)
    middle: Ints  # the value hdrh's mean takes for it (_hdr_median_equiv_value)
    counts: Ints
    cumulative: Ints  # counts up to and including each counter
    total: int  # the histogram's total_count, as hdrh's figures divide by it


def recorded(histogram: HdrHistogram) -> Recorded:
    """Read the histogram's counters once; each figure below is then a few numpy operations."""
    # A decoded histogram's counts array may be shorter than counts_len (hdrh reads 0 past it).
    length = min(histogram.counts_len, histogram.encoder.payload.counts_len)
    counts = np.ctypeslib.as_array(histogram.counts)[:length].astype(np.int64)
    index = np.flatnonzero(counts).astype(np.int64)
    half_magnitude = histogram.sub_bucket_half_count_magnitude
    half_count = histogram.sub_bucket_half_count
    unit = histogram.unit_magnitude
    # hdrh's get_value_from_index, element-wise: the first bucket holds both halves of its range.
    bucket = (index >> half_magnitude) - 1
    sub_bucket = (index & (half_count - 1)) + half_count
    first = bucket < 0
    sub_bucket[first] -= half_count
    bucket[first] = 0
    lowest = sub_bucket << (bucket + unit)
    # Every value of a counter lies in its bucket, whose counters are 2**(bucket + unit) wide.
    width = np.left_shift(1, bucket + unit, dtype=np.int64)
    kept = counts[index]
    return Recorded(
        lowest=lowest,
        highest=lowest + width - 1,
        middle=lowest + (width >> 1),
        counts=kept,
        cumulative=np.cumsum(kept),
        total=histogram.get_total_count(),
    )


def nearest_rank(percentile: float, total: int) -> int:
    """The 1-based rank of the `percentile` of `total` sorted values: ceil(p * total / 100), at least 1.

    hdrh's get_target_count_at_percentile rounds half-up instead (int(p * total / 100 + 0.5)): the
    rank below whenever the fraction is under .5, a smaller value than at least p% of the values
    are. The percentile is taken as the decimal it is written as (99.9 is 999/10): in binary
    floating point 99.9 * 1000 / 100 is a hair above 999, and ceil would make it 1000.
    """
    share = Fraction(repr(min(max(float(percentile), 0.0), 100.0)))
    return max(1, math.ceil(share * total / 100))


def value_at_percentile(histogram: HdrHistogram, seen: Recorded, percentile: float) -> int:
    """The value at the nearest rank: the first counter whose running count reaches it (its highest
    equivalent value, or the lowest for percentile 0, as hdrh's get_value_at_percentile)."""
    target = nearest_rank(percentile, seen.total)
    place = int(np.searchsorted(seen.cumulative, target, side="left"))
    if place == len(seen.cumulative):
        return 0
    return int(seen.highest[place] if percentile else seen.lowest[place])


def mean(seen: Recorded) -> float:
    """hdrh's get_mean_value; summed in Python integers, exact as hdrh's own sum."""
    if not seen.total:
        return 0.0
    total = sum(c * m for c, m in zip(seen.counts.tolist(), seen.middle.tolist(), strict=True))
    return float(total) / seen.total


def cdf(seen: Recorded) -> list[tuple[float, float]]:
    """(value, % of the total at or below it) for each recorded counter, as hdrh's recorded
    iterator gives them (value_iterated_to, total_count_to_this_value)."""
    if not seen.total:
        return []
    return [
        (float(value), 100.0 * count / seen.total)
        for value, count in zip(seen.highest.tolist(), seen.cumulative.tolist(), strict=True)
    ]
