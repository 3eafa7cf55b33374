"""The statistics of requests a lazy model not loaded refused before its load (judged by the
signatures its load would serve: server/protocol/declared.py), per model and version.

The loaded model would have counted each in its version's statistics (fail, its failure reason,
its rejection); before its load no version has statistics, and these requests had been counted
nowhere. They are kept here, shown by ModelStatistics and /metrics while the model is not loaded,
and handed over to the versions its next load serves, so its counts only grow from the first load
on (an eviction is an unload: its versions' counts go with it, as a reload's, and start from zero).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from batcher.stats import ModelStats
from protos import model_config_pb2 as mc
from server.errors import InvalidRequest
from server.models.versions import ModelVersion, version_number


def counted_version(
    signatures: Mapping[int, object], named: str, unnamed_to: int | None = None
) -> int | None:
    """The version a refused request is counted in: the one it names, or, naming none, `unnamed_to`
    (the one version routing sends it to, when known) or else the newest its load would serve (the
    one whose refusal it heard; a traffic policy splitting the traffic chooses only once loaded).
    None for a version not served or not a number: the loaded model refuses those before any
    version's statistics, too."""
    if not named:
        return unnamed_to if unnamed_to in signatures else max(signatures, default=None)
    try:
        number = version_number(named)
    except InvalidRequest:
        return None
    return number if number in signatures else None


def add_failures(into: ModelStats, early: ModelStats) -> None:
    """Add `early`'s failure counts (all that a refusal counts) to `into`."""
    into.fail.add(early.fail.ns, early.fail.count)
    for reason, count in early.failures.items():
        into.failures[reason] += count
    for reason, count in early.rejections.items():
        into.rejections[reason] += count
    into.shed += early.shed


@dataclass(frozen=True, slots=True)
class Series:
    """What a model's config adds to its /metrics series (server/observability/metrics_views.py)."""

    tags: Mapping[str, str] = field(default_factory=dict)  # metric_tags: labels `_<key>`
    cached: bool = False  # response_cache enabled: its cache series are shown


class EarlyRefusals:
    """Per lazy model not loaded, per version: the statistics of the requests refused before its load,
    and what its config adds to their series."""

    def __init__(self) -> None:
        self._stats: dict[str, dict[int, ModelStats]] = {}
        self._series: dict[str, Series] = {}

    def describe(self, name: str, config: mc.ModelConfig) -> None:
        """`name`'s config as last read (for its signatures): its series are labelled by it, as its
        loaded versions' are (they had lacked its metric_tags labels and its cache series)."""
        self._series[name] = Series(dict(config.metric_tags), config.response_cache.enable)

    def series(self, name: str) -> Series:
        return self._series.get(name) or Series()

    def stats_for(self, name: str, version: int) -> ModelStats:
        """Where a request refused before `name`'s load is counted, for `version`."""
        return self._stats.setdefault(name, {}).setdefault(version, ModelStats())

    def of(self, name: str) -> dict[int, ModelStats]:
        """`name`'s versions with requests refused since its last load (a copy)."""
        return dict(self._stats.get(name, {}))

    def each(self) -> Iterator[tuple[str, int, ModelStats]]:
        """Every (model, version, statistics); safe to call from a scrape's thread (copies)."""
        for name, versions in list(self._stats.items()):
            for number, stats in list(versions.items()):
                yield name, number, stats

    def hand_over(self, name: str, versions: Mapping[int, ModelVersion]) -> None:
        """`name` loaded `versions`: they take its early counts (a version it does not serve now
        drops them, as an unloaded version's statistics go)."""
        for number, early in self._stats.pop(name, {}).items():
            loaded = versions.get(number)
            if loaded is not None:
                add_failures(loaded.stats, early)

    def forget(self, name: str) -> None:
        self._stats.pop(name, None)
        self._series.pop(name, None)
