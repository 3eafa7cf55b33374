"""The sample counters on /metrics (written, dropped, lost), one record per model version.

A record outlives the loads that feed it: a reload or an unload-and-load continues its counts
(they had started again at 0 at every load, as Prometheus counters must not within one process),
and a chunk the writer finishes after its version was unloaded or evicted still counts (it had
been counted on a sampler no longer exported: 3,360 samples on disk, 3,240 on /metrics).

Bounded: a model's records go when the model leaves the server's index (ModelManager.drop_entry,
with its health record: its directory left the repository, or an upload-only name was unloaded),
and a model keeps the records of at most MAX_RETIRED_VERSIONS versions that are not loaded (a
repository rolling version numbers must not grow them for good). A chunk written after its record
went counts on the dropped record, which is freed with the chunk's last sample.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_RETIRED_VERSIONS = 16  # per model: the unloaded versions whose counts are still exported

Key = tuple[str, str]  # (model, version)


@dataclass
class SampleCounts:
    """One model version's counts. `written` and `lost` move on the writer's thread, `dropped` on
    the event loop's: each has one writer, so plain ints suffice (metrics_views.py's rule)."""

    labels: dict[str, str]  # the newest load's (its config's metric_tags may change)
    written: int = 0
    dropped: int = 0
    lost: int = 0


class SampleTotals:
    """The records; not thread-safe on its own (SamplingRegistry calls it under its lock)."""

    def __init__(self, max_retired_versions: int = MAX_RETIRED_VERSIONS) -> None:
        self._max_retired = max_retired_versions
        self._counts: dict[Key, SampleCounts] = {}
        self._retired: dict[Key, None] = {}  # versions not loaded now, the longest unloaded first

    def loaded(self, name: str, version: str, labels: dict[str, str]) -> SampleCounts:
        """The record of a version just loaded: its earlier loads' counts go on."""
        key = (name, version)
        self._retired.pop(key, None)
        counts = self._counts.get(key)
        if counts is None:
            counts = self._counts[key] = SampleCounts(labels)
        else:
            counts.labels = labels
        return counts

    def retired(self, name: str, version: str) -> None:
        """A version is no longer loaded: its record stays (a reload continues it); past
        MAX_RETIRED_VERSIONS unloaded versions of the model, the one unloaded longest goes."""
        key = (name, version)
        if key not in self._counts:
            return
        self._retired.pop(key, None)
        self._retired[key] = None
        same_model = [k for k in self._retired if k[0] == name]
        for old in same_model[: max(0, len(same_model) - self._max_retired)]:
            del self._retired[old]
            del self._counts[old]

    def forget(self, name: str) -> None:
        """The model left the server's index: its records go."""
        for key in [k for k in self._counts if k[0] == name]:
            del self._counts[key]
            self._retired.pop(key, None)

    def records(self) -> list[SampleCounts]:
        return list(self._counts.values())

    def __len__(self) -> int:
        return len(self._counts)
