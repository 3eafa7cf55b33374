"""`sluiceway drift` for a model, version or load with no samples exits 2 (a usage error), not 1
("not yet enough rows": waiting never mends a typo); its line of other loads stays short under
eviction churn (~150 load ids had gone on one line)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from server.cli import main
from server.observability.drift_cli import files_of_load
from server.observability.sample_layout import LOAD_KEY
from server.observability.sampling import SamplePolicy, SamplingRegistry
from server.settings import ServerSettings


def chunk(directory: Path, i: int, load_ns: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {"out:y": np.zeros((4, 2), np.float32), "rows": np.array([4]), LOAD_KEY: np.array([load_ns])}
    np.savez(directory / f"samples-{i:020d}-1-000001.npz", **arrays)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["nosuch"], "no samples of model 'nosuch'"),
        (["m", "--version", "9"], "no samples of model 'm' version 9"),
        (["m", "--load", "12345"], "no samples of load 12345"),
    ],
)
def test_a_model_version_or_load_without_samples_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], said: str
) -> None:
    chunk(tmp_path / "m" / "1", 0, 7)
    assert main(["drift", *flags, "--sample-dir", str(tmp_path)]) == 2
    assert said in capsys.readouterr().err


def test_too_few_rows_still_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    chunk(tmp_path / "m" / "1", 0, 7)
    assert main(["drift", "m", "--sample-dir", str(tmp_path)]) == 1
    assert "not enough sampled rows yet" in capsys.readouterr().err


def test_the_other_loads_line_names_the_newest_few(tmp_path: Path) -> None:
    loads = [10**18 + i for i in range(150)]
    for i, load_ns in enumerate(loads):
        chunk(tmp_path, i, load_ns)
    _, line = files_of_load(tmp_path, "newest")
    named = [load_ns for load_ns in loads if str(load_ns) in line]
    assert 2 <= len(named) <= 10 and named == loads[-len(named) :], named  # the one scored, the newest others
    assert f"and {150 - len(named)} older" in line and len(line) < 800


def test_a_version_loaded_but_not_yet_sampled_exits_1_not_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Its folder had been made at its first chunk: until then drift said "no samples of model"
    # and exit 2, failing a gate that waits on 1 right after each deploy.
    registry = SamplingRegistry(ServerSettings(cache_dir=tmp_path, sample_dir=tmp_path / "samples"))
    try:
        assert registry.sampler_for("fresh", 1, SamplePolicy(ratio=0.01)) is not None
        assert main(["drift", "fresh", "--sample-dir", str(tmp_path / "samples")]) == 1
        assert "not enough sampled rows yet" in capsys.readouterr().err
    finally:
        registry.close(5)
