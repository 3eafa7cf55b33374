"""Prediction sampling, three defects of the nineteenth session: ratios sampled exactly, BYTES kept
exactly in sample files, and the chunks of two loads of one version told apart on disk."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from protos import model_config_pb2 as mc
from server.observability.drift import DriftMonitor
from server.observability.drift_cli import ALL, files_of_load, monitor_from_files
from server.observability.sample_layout import bytes_tensor
from server.observability.sampling import ModelSampler, SamplingRegistry, sample_policy
from server.observability.sampling_writer import LOAD_KEY, Sample, SampleWriter
from server.settings import ServerSettings


class CountingWriter(SampleWriter):
    """A writer that only records which requests were offered (each request's output holds its
    number; no thread, no files)."""

    def __init__(self) -> None:  # no super().__init__: no thread
        self.offered: list[int] = []

    def put(self, sample: Sample) -> bool:
        self.offered.append(int(sample.outputs["y"][0, 0]))
        return True


def ratio_sampler(text: str, tmp_path: Path, writer: CountingWriter) -> ModelSampler:
    config = mc.ModelConfig(name="m")
    config.parameters["sample_ratio"].string_value = text
    policy = sample_policy(config, tmp_path, ServerSettings(cache_dir=tmp_path))
    return ModelSampler("m", 1, policy, writer, DriftMonitor(10, 10))


@pytest.mark.parametrize("text", ["0.1", "0.3", "0.7", "0.25", "0.333", "0.01", "0.2", "1", "0.999"])
def test_a_ratio_samples_exactly_its_share_of_1000_requests(text: str, tmp_path: Path) -> None:
    """0.1 had sampled 99 of 1000 (the 11th, 21st, ...), 0.3 299 and 0.7 699: a float credit
    reached 1.0 one request late."""
    writer = CountingWriter()
    sampler = ratio_sampler(text, tmp_path, writer)
    for n in range(1, 1001):
        sampler.offer({}, {"y": np.full((1, 1), n, np.float32)})
    ratio = Fraction(text)
    expected = [n for n in range(1, 1001) if math.floor(n * ratio) > math.floor((n - 1) * ratio)]
    assert writer.offered == expected
    assert len(writer.offered) == int(1000 * ratio)


def test_a_float_ratio_from_the_settings_is_its_decimal_value(tmp_path: Path) -> None:
    """1/3 as a float setting samples every 3rd request; 0.1 every 10th."""
    for ratio, every in ((1 / 3, 3), (0.1, 10)):
        config = mc.ModelConfig(name="m")
        policy = sample_policy(config, tmp_path, ServerSettings(cache_dir=tmp_path, sample_ratio=ratio))
        writer = CountingWriter()
        sampler = ModelSampler("m", 1, policy, writer, DriftMonitor(10, 10))
        for n in range(1, 31):
            sampler.offer({}, {"y": np.full((1, 1), n, np.float32)})
        assert writer.offered == list(range(every, 31, every))


class Source:
    def __init__(self, load_ns: int = 0) -> None:
        self.directory = Path("m/1")
        self.monitor = DriftMonitor(reference_rows=4, window_rows=4)
        self.load_ns = load_ns

    def wrote(self, samples: int) -> None:
        pass

    def lost(self, samples: int) -> None:
        pass


def strings(values: list[bytes]) -> np.ndarray:
    array = np.empty((len(values), 1), dtype=object)
    array[:, 0] = values
    return array


def test_bytes_values_round_trip_exactly_with_their_nul_bytes(tmp_path: Path) -> None:
    """b"ab\\0" had read back as b"ab" and b"\\0\\0" as b"": numpy's fixed-width bytes drop trailing
    NULs."""
    first = [b"ab\x00", b"\x00\x00", b"\x00x", b"", b"\x00"]
    second = [b"longer value\x00\x00", b"", b"z"]
    writer = SampleWriter(tmp_path, max_bytes=1 << 20, queue_size=100, queue_bytes=1 << 20, chunk_age_s=3600)
    source = Source()
    for values in (first, second):
        rows = len(values)
        inputs = {"s": strings(values), "x": np.ones((rows, 2), np.float32)}
        outputs = {"o_s": strings(values[::-1]), "y": np.ones((rows, 1), np.float32)}
        assert writer.put(Sample(source, inputs, outputs, 0, 100))
    assert writer.flush(30)
    writer.close(30)
    (path,) = (tmp_path / "m" / "1").glob("samples-*.npz")
    with np.load(path) as data:  # no pickle
        sent_in = bytes_tensor(data, "in:s")
        sent_out = bytes_tensor(data, "out:o_s")
        assert data["bytes:in:s"].dtype == np.uint8 and data["len:in:s"].shape == (8, 1)
    assert sent_in[:, 0].tolist() == first + second
    assert sent_out[:, 0].tolist() == first[::-1] + second[::-1]
    # Drift still skips BYTES, and the lengths are no series of their own.
    assert {(r.kind, r.tensor) for r in source.monitor.rows()} <= {("input", "x"), ("output", "y")}
    monitor = monitor_from_files(tmp_path / "m" / "1", reference_rows=4, window_rows=4)
    assert {r.tensor for r in monitor.rows()} <= {"x", "y"}


ROWS = 400  # per window: PSI's noise (about bins * 2 / ROWS) well below its threshold


def offer_rows(sampler: ModelSampler, rows: np.ndarray) -> None:
    for row in rows:
        sampler.offer({"x": row[None, :]}, {"y": row[None, :1] * 2})


def test_the_chunks_of_two_loads_are_told_apart_and_the_cli_scores_the_newest(tmp_path: Path) -> None:
    """After a reload the CLI's reference had been the old load's rows, where the gauges had a new
    reference: 5 of 12 series drifted in the CLI, none in /metrics."""
    settings = ServerSettings(
        cache_dir=tmp_path,
        sample_ratio=1.0,
        sample_what="inputs_and_outputs",
        drift_reference_samples=ROWS,
        drift_window_samples=ROWS,
        sample_queue_size=4 * ROWS * 2,  # every sample queued: 1024 had dropped some on a busy machine
    )
    registry = SamplingRegistry(settings)
    policy = sample_policy(mc.ModelConfig(name="m"), tmp_path, settings)
    rng = np.random.default_rng(3)
    old = registry.sampler_for("m", 1, policy)
    assert old is not None
    offer_rows(old, rng.standard_normal((2 * ROWS, 3)))
    new = registry.sampler_for("m", 1, policy)  # a reload: a new sampler, a new reference
    assert new is not None and new.load_ns > old.load_ns
    registry.retire(old)
    shifted = rng.standard_normal((2 * ROWS, 3))
    shifted[:, 0] += 3.0
    offer_rows(new, shifted)
    assert registry.flush(30)
    registry.close(30)

    directory = tmp_path / "samples" / "m" / "1"
    loads = set()
    for path in directory.glob("samples-*.npz"):
        with np.load(path) as data:
            loads.add(int(data[LOAD_KEY][0]))
    assert loads == {old.load_ns, new.load_ns}

    gauges = {(r.kind, r.tensor, r.feature): (r.psi, r.ks, r.drifted) for r in new.monitor.rows()}
    assert gauges and not any(drifted for _, _, drifted in gauges.values())
    files = monitor_from_files(directory, reference_rows=ROWS, window_rows=ROWS)
    assert {(r.kind, r.tensor, r.feature): (r.psi, r.ks, r.drifted) for r in files.rows()} == gauges

    chosen, line = files_of_load(directory, str(old.load_ns))
    assert chosen and f"scoring load {old.load_ns}" in line and str(new.load_ns) in line
    everything, _ = files_of_load(directory, ALL)
    assert len(everything) == len(list(directory.glob("samples-*.npz")))
    both = monitor_from_files(directory, reference_rows=ROWS, window_rows=ROWS, load=ALL)
    assert any(r.drifted for r in both.rows())  # the old load's reference: feature 0 moved by 3


def test_files_without_a_load_id_are_one_load_of_their_own(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    for i in range(3):
        earlier = {"out:y": rng.standard_normal(50)}
        np.savez(tmp_path / f"samples-{i:020d}-1-000001.npz", **earlier)  # type: ignore[arg-type]
    files, line = files_of_load(tmp_path, "newest")
    assert len(files) == 3 and "scoring load 0" in line
    later = {"out:y": rng.standard_normal(50), LOAD_KEY: np.array([7], np.int64)}
    np.savez(tmp_path / f"samples-{9:020d}-1-000001.npz", **later)  # type: ignore[arg-type]
    files, line = files_of_load(tmp_path, "newest")
    assert [p.name for p in files] == [f"samples-{9:020d}-1-000001.npz"] and "other loads" in line
    assert len(files_of_load(tmp_path, "0")[0]) == 3
