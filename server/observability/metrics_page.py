"""The /metrics page: Prometheus text format 0.0.4 written straight from the samples at a scrape.

Why not OpenTelemetry's Prometheus exporter and prometheus_client's exposition (the path until the
thirtieth session): with 300 models of three versions (60,000 series) a scrape cost 1.7 s of the
server's CPU, about half in the SDK's measurement pipeline and half in prometheus_client checking
and escaping every label name of every sample, and ServerLive waited up to 417 ms behind it (the
GIL). Here each series' label text is made once and a histogram's buckets reuse it: the same page
in a small part of that (BENCHMARKS.md section 36). Triton's metrics port serves this format too.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

Labels = Mapping[str, str]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
KINDS = ("counter", "gauge", "histogram")
# Every 256 lines the GIL is let go (`time.sleep(0)`): a thread waiting for it (the event loop,
# back from a socket call) gets it then, not after the interpreter's 5 ms switch interval.
YIELD_EVERY_LINES = 0xFF

_NOT_IN_A_NAME = re.compile(r"[^a-zA-Z0-9_]")
_VALUE_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n"})
_HELP_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n"})


@dataclass(frozen=True, slots=True)
class HistogramPoint:
    """One series of a histogram: per-bucket counts (not cumulative), the last for above every
    bound, and the sum of the values observed."""

    labels: Labels
    bounds: Sequence[float]
    counts: Sequence[int]
    total: float


@dataclass(frozen=True, slots=True)
class Family:
    """One metric: its name as written (a counter's with its `_total`), kind and HELP text, and
    its samples: (labels, value) for a counter or gauge, HistogramPoint for a histogram; read
    once, as the page is written (a generator is best: see `render`)."""

    name: str
    kind: str
    help: str
    samples: Iterable[tuple[Labels, float]] | Iterable[HistogramPoint]


def series_labels(model: str, version: str, tags: Mapping[str, str]) -> dict[str, str]:
    """A version's series' labels: its model, version and config metric_tags, as Triton labels them."""
    labels = {"model": model, "version": version}
    for key, value in tags.items():
        labels[f"_{key}"] = value
    return labels


def label_name(key: str) -> str:
    """A label name Prometheus accepts: characters outside [a-zA-Z0-9_] become `_`, and one
    starting with a digit gets a `_` in front (a config's metric_tags key may be anything)."""
    name = _NOT_IN_A_NAME.sub("_", key)
    return f"_{name}" if name[:1].isdigit() else name


def number(value: float) -> str:
    """A sample value as Prometheus writes it: +Inf, -Inf, NaN, else the shortest repr of a float."""
    if value.__class__ is int:  # most samples are counts: no float round trip for them
        return f"{value}.0" if -(2**53) < value < 2**53 else repr(float(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _bound(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else repr(float(bound))


class _LabelText:
    """Label texts of one scrape, each label name checked once and each set of labels written once
    (a version's labels repeat in every family)."""

    def __init__(self) -> None:
        self._names: dict[str, str] = {}
        self._texts: dict[tuple[str, ...], str] = {}
        self._les: dict[int, tuple[Sequence[float], list[str]]] = {}

    def inner(self, labels: Labels) -> str:
        """`a="x",b="y"`: the text between a series' braces."""
        key = (*labels, *labels.values())  # strings only: the GC stops tracking such a tuple
        text = self._texts.get(key)
        if text is None:
            text = self._texts[key] = self._write(labels)
        return text

    def les(self, bounds: Sequence[float]) -> list[str]:
        """Each bucket's `le="..."}` text (a family's points share one bounds sequence)."""
        known = self._les.get(id(bounds))
        if known is None or known[0] is not bounds:
            known = self._les[id(bounds)] = (bounds, [f'le="{_bound(b)}"}} ' for b in bounds])
        return known[1]

    def _write(self, labels: Labels) -> str:
        names = self._names
        parts = []
        for key, value in sorted(labels.items()):  # by name, as the exporter had written them
            name = names.get(key)
            if name is None:
                name = names[key] = label_name(key)
            parts.append(f'{name}="{str(value).translate(_VALUE_ESCAPES)}"')
        return ",".join(parts)


def _simple(
    name: str, samples: Iterable[tuple[Labels, float]], text: _LabelText, out: list[str], seen: set[str]
) -> None:
    for labels, value in samples:
        if len(out) & YIELD_EVERY_LINES == 0:
            time.sleep(0)
        inner = text.inner(labels)
        if inner in seen:
            continue
        seen.add(inner)
        out.append(f"{name}{{{inner}}} {number(value)}\n" if inner else f"{name} {number(value)}\n")


def _histogram(
    name: str, points: Iterable[HistogramPoint], text: _LabelText, out: list[str], seen: set[str]
) -> None:
    for point in points:
        if len(out) & YIELD_EVERY_LINES < 26:  # a point writes ~26 lines
            time.sleep(0)
        inner = text.inner(point.labels)
        if inner in seen:
            continue
        seen.add(inner)
        head = f"{name}_bucket{{{inner}," if inner else f"{name}_bucket{{"
        running = 0
        for le, count in zip(text.les(point.bounds), point.counts, strict=False):
            running += count
            out.append(f"{head}{le}{number(running)}\n")
        running = sum(point.counts)
        out.append(f'{head}le="+Inf"}} {number(running)}\n')
        braces = f"{{{inner}}}" if inner else ""
        out.append(f"{name}_count{braces} {number(running)}\n")
        out.append(f"{name}_sum{braces} {number(point.total)}\n")


def render(families: Iterable[Family]) -> bytes:
    """The page: each family's HELP and TYPE, then its samples; a family without samples is left
    out. A name given twice is written once with both's samples (two HELP lines for one name are
    an error to Prometheus's parsers: the OpenTelemetry exporter had written `target_info` twice).

    Samples are read as they are written, never gathered: a scrape that held every sample until
    the end (the exporter's way) kept enough objects alive to set off a full collection of the
    cyclic GC, 110 ms of every thread stopped with 900 versions loaded. A series given twice (the
    same name and labels) is written once, the first: a page with two is refused by Prometheus's
    parsers (a lazy model's version both ready and in its early refusals had been written twice)."""
    grouped: dict[str, list[Family]] = {}
    for family in families:
        if family.kind not in KINDS:
            raise ValueError(f"metric {family.name}: kind {family.kind!r} is not one of {KINDS}")
        same = grouped.setdefault(family.name, [family])
        if same[0].kind != family.kind:
            raise ValueError(f"metric {family.name}: given as both {same[0].kind} and {family.kind}")
        if same[0] is not family:
            same.append(family)
    text = _LabelText()
    chunks: list[bytes] = []
    for name, same in grouped.items():
        first = same[0]
        out = [f"# HELP {name} {first.help.translate(_HELP_ESCAPES)}\n# TYPE {name} {first.kind}\n"]
        seen: set[str] = set()  # label texts written: strings, which the GC does not track
        for family in same:
            if first.kind == "histogram":
                _histogram(name, family.samples, text, out, seen)  # type: ignore[arg-type]
            else:
                _simple(name, family.samples, text, out, seen)  # type: ignore[arg-type]
        if len(out) > 1:  # no samples: no HELP and TYPE either
            chunks.append("".join(out).encode())
            time.sleep(0)
    return b"".join(chunks)
