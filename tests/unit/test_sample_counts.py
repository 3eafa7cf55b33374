"""The sample counters (sample_counts.py): one record per model version across its loads, counting
writes that finish after the version was retired, bounded by the model's stay in the index and by
MAX_RETIRED_VERSIONS unloaded versions a model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from server.observability.sample_counts import MAX_RETIRED_VERSIONS
from server.observability.sampling import SamplePolicy, SamplingRegistry
from server.settings import ServerSettings

POLICY = SamplePolicy(ratio=1.0)


@pytest.fixture()
def registry(tmp_path: Path) -> Iterator[SamplingRegistry]:
    sampling = SamplingRegistry(ServerSettings(cache_dir=tmp_path, sample_dir=tmp_path / "samples"))
    yield sampling
    sampling.close(5)


def written(registry: SamplingRegistry) -> dict[tuple[str, str], float]:
    return {
        (labels["model"], labels["version"]): value
        for name, labels, value in registry.gauge_values()
        if name == "sluiceway_samples_written_total"
    }


def test_counts_go_on_across_loads_and_count_writes_after_retirement(registry: SamplingRegistry) -> None:
    first = registry.sampler_for("m", 1, POLICY)
    assert first is not None
    first.wrote(3)
    first.lost(1)
    registry.retire(first)
    first.wrote(2)  # a chunk the writer finished after the unload: it had counted nowhere on /metrics
    assert written(registry) == {("m", "1"): 5.0}
    second = registry.sampler_for("m", 1, POLICY)  # loaded again: it had started at 0
    assert second is not None and (second.written, second.lost_samples) == (5, 1)
    second.wrote(1)
    assert written(registry) == {("m", "1"): 6.0}


def test_a_model_that_leaves_the_index_takes_its_counters(registry: SamplingRegistry) -> None:
    sampler = registry.sampler_for("gone", 1, POLICY)
    assert sampler is not None
    sampler.wrote(4)
    registry.retire(sampler)
    registry.forget("gone")
    assert written(registry) == {}
    again = registry.sampler_for("gone", 1, POLICY)  # a new model of that name, as a name never known
    assert again is not None and again.written == 0


def test_a_model_keeps_the_counters_of_few_unloaded_versions(registry: SamplingRegistry) -> None:
    for version in range(1, 3 * MAX_RETIRED_VERSIONS + 1):  # a repository rolling its versions
        sampler = registry.sampler_for("m", version, POLICY)
        assert sampler is not None
        sampler.wrote(1)
        registry.retire(sampler)
    kept = sorted(int(v) for _, v in written(registry))
    assert kept == list(range(2 * MAX_RETIRED_VERSIONS + 1, 3 * MAX_RETIRED_VERSIONS + 1))  # the newest
