"""The /metrics page writer (server/observability/metrics_page.py): the same series as
prometheus_client's exposition of the same families, read back by its parser; every series
written however many (OpenTelemetry's SDK had folded those past 2,000 a metric into one
`otel_metric_overflow` series); one HELP a name; values and label names as Prometheus reads them."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from server.observability.metrics_page import Family, HistogramPoint, label_name, number, render

VALUES = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
KEYS = st.sampled_from(["model", "version", "reason", "_tag-1", "9lives", "ü"])
LABELS = st.dictionaries(KEYS, VALUES, max_size=3)
NUMBERS = st.one_of(st.integers(-(2**60), 2**60), st.floats(allow_nan=False, allow_infinity=True))


def read(text: str) -> dict[str, Any]:
    """Each family's type, HELP and samples as prometheus_client's parser reads them."""
    return {
        f.name: (
            f.type,
            f.documentation,
            sorted((s.name, sorted(s.labels.items()), s.value) for s in f.samples),
        )
        for f in text_string_to_metric_families(text)
    }


class _Reference:
    """The same families through prometheus_client's own exposition."""

    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> list[Any]:
        return self.families


def reference(families: list[Family]) -> str:
    out: list[Any] = []
    for f in families:
        rows: list[Any] = list(f.samples)
        if f.kind == "histogram":
            points = [p for p in rows if isinstance(p, HistogramPoint)]
            keys = sorted({label_name(k) for p in points for k in p.labels})
            family: Any = HistogramMetricFamily(f.name, f.help, labels=keys)
            for p in points:
                named = {label_name(k): v for k, v in p.labels.items()}
                cumulative = [sum(p.counts[: i + 1]) for i in range(len(p.bounds))]
                buckets = [(str(b), float(c)) for b, c in zip(p.bounds, cumulative, strict=True)]
                buckets.append(("+Inf", float(sum(p.counts))))
                family.add_metric([named.get(k, "") for k in keys], buckets, p.total)
        else:
            kind = CounterMetricFamily if f.kind == "counter" else GaugeMetricFamily
            keys = sorted({label_name(k) for labels, _ in rows for k in labels})
            family = kind(f.name, f.help, labels=keys)
            for labels, value in rows:
                named = {label_name(k): v for k, v in labels.items()}
                family.add_metric([named.get(k, "") for k in keys], float(value))
        out.append(family)
    return generate_latest(_Reference(out)).decode()


def _same_keys(rows: list[tuple[dict[str, str], float]]) -> list[tuple[dict[str, str], float]]:
    """prometheus_client's families give every sample the same label names: fill the missing."""
    keys = sorted({k for labels, _ in rows for k in labels})
    filled = [({k: labels.get(k, "") for k in keys}, value) for labels, value in rows]
    series: dict[tuple[tuple[str, str], ...], tuple[dict[str, str], float]] = {}
    for labels, value in filled:  # one sample a series (the writer keeps the first of a repeat)
        series.setdefault(tuple(sorted((label_name(k), v) for k, v in labels.items())), (labels, value))
    return list(series.values())


@settings(max_examples=60, deadline=None)
@given(
    gauges=st.lists(st.tuples(LABELS, NUMBERS), max_size=5),
    counters=st.lists(st.tuples(LABELS, st.integers(0, 2**50)), max_size=5),
    help_text=VALUES,
)
def test_the_same_series_as_prometheus_clients_exposition(
    gauges: list[tuple[dict[str, str], float]], counters: list[tuple[dict[str, str], int]], help_text: str
) -> None:
    families = [
        Family("a_gauge", "gauge", help_text, _same_keys(gauges)),
        Family("a_count_total", "counter", "counted\nhere", _same_keys([(k, float(v)) for k, v in counters])),
        Family("a_histogram_us", "histogram", "µs", [
            HistogramPoint({"model": "m", "version": "1"}, (50, 100), [1, 0, 2], 1234.5),
            HistogramPoint({"model": 'q"\\\n', "version": "2"}, (50, 100), [0, 0, 0], 0.0),
        ]),
    ]  # fmt: skip
    with_samples = {name: family for name, family in read(reference(families)).items() if family[2]}
    assert read(render(families).decode()) == with_samples  # a family without samples: left out


def test_every_series_is_written_past_two_thousand_a_metric() -> None:
    rows = [({"model": f"m{i}", "version": "1", "reason": r}, i) for i in range(1000) for r in "abcde"]
    text = render([Family("sluiceway_rejection_total", "counter", "refused", rows)]).decode()
    samples = read(text)["sluiceway_rejection"][2]
    assert len(samples) == 5000
    assert "overflow" not in text
    assert (
        "sluiceway_rejection_total",
        [("model", "m999"), ("reason", "e"), ("version", "1")],
        999.0,
    ) in samples


def test_a_name_given_twice_is_one_family_with_one_help() -> None:
    text = render([
        Family("x", "gauge", "first", [({"a": "1"}, 1)]),
        Family("x", "gauge", "second", [({"a": "2"}, 2)]),
    ]).decode()  # fmt: skip
    assert text.count("# HELP x") == 1 and text.count("# TYPE x") == 1
    assert read(text)["x"] == ("gauge", "first", [("x", [("a", "1")], 1.0), ("x", [("a", "2")], 2.0)])
    with pytest.raises(ValueError, match="both gauge and counter"):
        render([Family("x", "gauge", "", [({}, 1)]), Family("x", "counter", "", [({}, 1)])])


def test_families_without_samples_are_left_out_and_an_unknown_kind_is_refused() -> None:
    assert render([Family("empty", "gauge", "nothing", [])]) == b""
    assert (
        render([Family("bare", "gauge", "no labels", [({}, 3)])])
        == b"# HELP bare no labels\n# TYPE bare gauge\nbare 3.0\n"
    )
    with pytest.raises(ValueError, match="summary"):
        render([Family("s", "summary", "", [({}, 1)])])


def test_values_and_label_names_as_prometheus_reads_them() -> None:
    assert [number(v) for v in (0, 7, -3, 2**60, 0.25, math.inf, -math.inf, 1e-7)] == [
        "0.0", "7.0", "-3.0", "1.152921504606847e+18", "0.25", "+Inf", "-Inf", "1e-07",
    ]  # fmt: skip
    assert number(math.nan) == "NaN"
    assert [label_name(k) for k in ("model", "_tag-1", "9lives", "a.b c")] == [
        "model",
        "_tag_1",
        "_9lives",
        "a_b_c",
    ]


def test_a_series_given_twice_is_written_once_the_first() -> None:
    """A lazy model's version both ready and in its early refusals had been written twice; two
    samples of one series make Prometheus's parsers refuse the page."""
    rows = [({"model": "m", "version": "1"}, 3), ({"version": "1", "model": "m"}, 5), ({"model": "n"}, 1)]
    point = HistogramPoint({"model": "m"}, (1,), [1, 0], 1.0)
    text = render([
        Family("x_total", "counter", "counted", rows),
        Family("h", "histogram", "hist", [point, HistogramPoint({"model": "m"}, (1,), [0, 2], 9.0)]),
    ]).decode()  # fmt: skip
    assert read(text)["x"][2] == [("x_total", [("model", "m"), ("version", "1")], 3.0),
                                  ("x_total", [("model", "n")], 1.0)]  # fmt: skip
    assert text.count('h_bucket{model="m",le="+Inf"}') == 1 and 'h_sum{model="m"} 1.0' in text
