"""Under --workers, what a worker knows of the weights of a lazy model it has not loaded: the
change log of the generation its load would read (rollout_replay.py), replayed without a state.
The replay ends where a worker loading the model ends (its state built from the config, then the
log applied: RolloutShare.built), across refused changes, an automatic rollback and a compaction;
and the early judge reads that generation's log (the same digest as the load's) with the config."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from server import errors
from server.models.repository import load_model_source, version_fingerprint
from server.models.rollout_ops import COMPACT_EVERY, OperatorChange, claim, generation
from server.models.rollout_replay import logged_weights
from server.models.rollout_share import RolloutShare
from tests.support.rollout_workers import Worker, model_entry
from tests.unit.test_lazy_judge_more import TWO_VERSIONS
from tests.unit.test_lazy_loads import FakeManager, loads_for


def replayed(directory: Path) -> dict[int, int] | None:
    return logged_weights(directory, "m", generation(model_entry()), {1: 50, 2: 50}, {1, 2})


def test_the_replayed_log_gives_the_weights_a_worker_loading_the_model_routes_by(tmp_path: Path) -> None:
    first = Worker(0, tmp_path, model_entry())
    assert replayed(tmp_path) == {1: 50, 2: 50}  # nothing logged: the config's
    first.fail_version_2()  # an automatic rollback, logged as "auto"
    assert replayed(tmp_path) == first.weights() == {1: 50, 2: 0}
    with pytest.raises(errors.RolloutRefused):  # the only version taking requests: never logged
        first.submit("rollback", version=1)
    first.submit("weights", weights={1: 10, 2: 90})
    first.submit("rollback", version=1)
    assert replayed(tmp_path) == first.weights() == {1: 0, 2: 90}
    first.submit("promote", version=2)
    # A change logged by another worker that this state refuses (a version it does not serve).
    change = OperatorChange("m", generation(model_entry()), 5, 1, "weights", ((3, 100),), (), "", 0.0)
    assert claim(tmp_path, change)
    for seq in range(2 * COMPACT_EVERY):  # past compactions: the early files are gone
        first.submit("weights", weights={1: seq % 7, 2: 1 + seq % 5})
    assert not (tmp_path / change.file_name()).exists()
    loading = Worker(1, tmp_path, model_entry())  # its state built now: the config, then the log
    assert replayed(tmp_path) == loading.weights() == first.weights()
    # Another generation (other files) has a log of its own: the config's weights.
    other = logged_weights(tmp_path, "m", generation(model_entry("b")), {1: 50, 2: 50}, {1, 2})
    assert other == {1: 50, 2: 50}


async def test_the_early_judge_routes_by_the_log_of_the_generation_its_load_reads(tmp_path: Path) -> None:
    """Its config sends every request to version 2; the log of the files on disk says 1:100. The
    judge had not known the shared weights at all (judged by every version)."""
    for number in (1, 2):
        (tmp_path / "w" / str(number)).mkdir(parents=True)
        (tmp_path / "w" / str(number) / "model.onnx").write_bytes(b"never read")
    (tmp_path / "w" / "config.pbtxt").write_text(TWO_VERSIONS)
    fake = FakeManager()
    share = RolloutShare(tmp_path / "share", 0, fake)  # type: ignore[arg-type]
    share.directory.mkdir()
    loads = loads_for(tmp_path, fake, 0)
    loads.register_lazy("w")
    source = load_model_source(tmp_path, "w")
    # As a load computes it: from its versions' fingerprints (ModelVersion.fingerprint).
    versions = {n: SimpleNamespace(fingerprint=version_fingerprint(source, n)) for n in source.versions}
    gen = generation(SimpleNamespace(name="w", versions=versions))  # type: ignore[arg-type]
    assert await loads.signatures("w") is not None
    assert loads.unnamed_version("w") == 2  # nothing logged: its config's newest
    assert claim(share.directory, OperatorChange("w", gen, 1, 1, "weights", ((1, 100),), (), "", 0.0))
    assert await loads.signatures("w") is not None  # the next request's read
    assert loads.unnamed_version("w") == 1
    assert fake.loaded == []
