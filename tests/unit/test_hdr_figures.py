"""loadtest.hdr_figures gives hdrh's own numbers: mean and the recorded iterator's CDF, and
percentiles as hdrh's walk reads them at the nearest rank (ceil; hdrh's own rounds the rank half-up:
tests/unit/test_loadtest_h19_percentiles.py), on empty, single-value, merged (decoded) and wide
histograms, and each counter's values."""

from __future__ import annotations

import random

import pytest
from hdrh.histogram import HdrHistogram

from loadtest import hdr_figures
from loadtest.stats import (
    HIGHEST_US,
    PERCENTILES,
    cdf_points,
    latency_summary,
    merge_histograms,
    new_histogram,
)

ASKED = [0.0, 0.1, 1.0, 25.0, 50.0, 90.0, 99.0, 99.9, 99.99, 100.0, *PERCENTILES.values()]


def _with(values: list[int]) -> HdrHistogram:
    histogram = new_histogram()
    for value in values:
        histogram.record_value(value)
    return histogram


def _hdrh_cdf(histogram: HdrHistogram) -> list[tuple[float, float]]:
    """What cdf_points read from hdrh's recorded iterator before hdr_figures."""
    total = histogram.get_total_count()
    return [
        (float(item.value_iterated_to), 100.0 * item.total_count_to_this_value / total)
        for item in histogram.get_recorded_iterator()
    ]


def _hdrh_at_nearest_rank(histogram: HdrHistogram, percentile: float) -> int:
    """hdrh's get_value_at_percentile walk, its target count the nearest rank."""
    target = hdr_figures.nearest_rank(percentile, histogram.get_total_count())
    total = 0
    for index in range(histogram.counts_len):
        total += histogram.get_count_at_index(index)
        if total >= target:
            value = histogram.get_value_from_index(index)
            if percentile:
                return int(histogram.get_highest_equivalent_value(value))
            return int(histogram.get_lowest_equivalent_value(value))
    return 0


def _histograms() -> dict[str, HdrHistogram]:
    rng = random.Random(7)
    wide = [min(HIGHEST_US, max(1, int(rng.lognormvariate(7, 2.5)))) for _ in range(3000)]
    parts = [_with([rng.randint(1, 50_000) for _ in range(500)]).encode() for _ in range(3)]
    counted = new_histogram()
    counted.record_value(1234, count=10**9)  # large counts: the mean's sum must stay exact
    counted.record_value(HIGHEST_US, count=3)
    return {
        "empty": new_histogram(),
        "one value": _with([1500]),
        "one at the lowest": _with([1]),
        "one at the highest": _with([HIGHEST_US]),
        "equal values": _with([700] * 5),
        "first bucket": _with(list(range(1, 2048))),
        "wide (1 us .. 1 h)": _with(wide),
        "merged from encoded parts": merge_histograms(parts),
        "decoded": HdrHistogram.decode(_with(wide[:200]).encode()),
        "large counts": counted,
    }


NAMES = list(_histograms())


@pytest.fixture(scope="module")
def histograms() -> dict[str, HdrHistogram]:
    return _histograms()


@pytest.mark.parametrize("name", NAMES)
def test_figures_equal_hdrhs_own(name: str, histograms: dict[str, HdrHistogram]) -> None:
    histogram = histograms[name]
    seen = hdr_figures.recorded(histogram)
    for percentile in ASKED:
        ours = hdr_figures.value_at_percentile(histogram, seen, percentile)
        assert ours == _hdrh_at_nearest_rank(histogram, percentile), percentile
    assert hdr_figures.mean(seen) == histogram.get_mean_value()
    assert hdr_figures.cdf(seen) == _hdrh_cdf(histogram)


def test_every_counters_values_are_hdrhs() -> None:
    """Lowest, highest and middle value of each counter index, against hdrh's per-value methods."""
    histogram = new_histogram()
    for index in range(histogram.counts_len):
        histogram.counts[index] = 1
    histogram.total_count = histogram.counts_len
    seen = hdr_figures.recorded(histogram)
    assert len(seen.lowest) == histogram.counts_len
    lowest = [histogram.get_value_from_index(index) for index in range(histogram.counts_len)]
    assert seen.lowest.tolist() == lowest
    assert seen.highest.tolist() == [histogram.get_highest_equivalent_value(v) for v in lowest]
    assert seen.middle.tolist() == [
        histogram._hdr_median_equiv_value(histogram.get_highest_equivalent_value(v)) for v in lowest
    ]


def test_the_reports_figures_are_unchanged(histograms: dict[str, HdrHistogram]) -> None:
    """latency_summary and cdf_points as hdrh's iterators read them (the results' numbers), the
    percentiles at the nearest rank."""
    for name in ("empty", "one value", "wide (1 us .. 1 h)", "merged from encoded parts"):
        histogram = histograms[name]
        if histogram.get_total_count() == 0:
            assert latency_summary(histogram) == dict.fromkeys([*PERCENTILES, "mean", "min", "max"])
            assert cdf_points(histogram) == []
            continue
        summary = {key: float(_hdrh_at_nearest_rank(histogram, p)) for key, p in PERCENTILES.items()}
        summary["mean"] = round(histogram.get_mean_value(), 1)
        summary["min"] = float(histogram.get_min_value())
        summary["max"] = float(histogram.get_max_value())
        assert latency_summary(histogram) == summary
        points = _hdrh_cdf(histogram)
        step = max(1, len(points) // 300)
        thinned = points[::step]
        if thinned[-1] != points[-1]:
            thinned.append(points[-1])
        assert cdf_points(histogram) == thinned


def test_the_report_does_not_walk_hdrhs_counters(
    histograms: dict[str, HdrHistogram], monkeypatch: pytest.MonkeyPatch
) -> None:
    """hdrh's mean and recorded iterator walk every counter in Python (~35-50 ms a histogram, ~0.25 s
    a results entry): the summary and the CDF read the counts array instead."""

    def walked(*args: object) -> None:
        raise AssertionError("hdrh walked its counters")

    histogram = histograms["wide (1 us .. 1 h)"]
    expected_summary, expected_cdf = latency_summary(histogram), cdf_points(histogram)
    monkeypatch.setattr(HdrHistogram, "get_mean_value", walked)
    monkeypatch.setattr(HdrHistogram, "get_recorded_iterator", walked)
    monkeypatch.setattr(HdrHistogram, "get_value_at_percentile", walked)
    assert latency_summary(histogram) == expected_summary
    assert cdf_points(histogram) == expected_cdf
