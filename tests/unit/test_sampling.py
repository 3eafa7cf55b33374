"""Sampling: which requests, the writer's byte bound and drops, the model parameters."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

import numpy as np
import pytest

from protos import model_config_pb2 as mc
from server.models.config import ConfigError, validate_config
from server.observability.drift import DriftMonitor
from server.observability.sampling import ModelSampler, SamplePolicy, SamplingRegistry, sample_policy
from server.observability.sampling_writer import AnyArray, Sample, SampleWriter, save_npz
from server.settings import ServerSettings


class Source:
    def __init__(self, directory: str = "m/1", monitor: DriftMonitor | None = None) -> None:
        self.directory = Path(directory)
        self.monitor = monitor
        self.load_ns = 0
        self.count = 0
        self.lost_count = 0

    def wrote(self, samples: int) -> None:
        self.count += samples

    def lost(self, samples: int) -> None:
        self.lost_count += samples


def sample(source: Source, rows: int = 4, value: float = 0.0) -> Sample:
    outputs = {"y": np.full((rows, 2), value, dtype=np.float32)}
    inputs = {"x": np.full((rows, 8), value, dtype=np.float32)}
    return Sample(source, inputs, outputs, 0, rows * 40)


class BlockedSave:
    """A save function that waits until the test opens the gate: a writer held deterministically."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()

    def __call__(self, file: IO[bytes], arrays: Mapping[str, AnyArray]) -> None:
        self.entered.set()
        assert self.gate.wait(30)
        save_npz(file, arrays)


@pytest.fixture()
def blocked() -> Iterator[BlockedSave]:
    save = BlockedSave()
    yield save
    save.gate.set()


def test_a_full_queue_drops_and_counts_without_blocking(tmp_path: Path, blocked: BlockedSave) -> None:
    writer = SampleWriter(
        tmp_path, max_bytes=1 << 20, queue_size=3, queue_bytes=1 << 20, save=blocked, chunk_age_s=0
    )
    sampler = ModelSampler("m", 1, SamplePolicy(ratio=1.0, with_inputs=True), writer, DriftMonitor(10, 10))
    sampler.offer({"x": np.zeros((1, 8), np.float32)}, {"y": np.zeros((1, 2), np.float32)})
    assert blocked.entered.wait(30)  # the thread holds the first sample: the queue is empty again
    for _ in range(5):
        sampler.offer({"x": np.zeros((1, 8), np.float32)}, {"y": np.zeros((1, 2), np.float32)})
    assert (sampler.offered, sampler.dropped) == (6, 2)  # 3 queued behind the one being written
    blocked.gate.set()
    assert writer.flush(30)
    assert sampler.written == 4
    writer.close(30)


def test_the_queue_is_bounded_in_bytes_too(tmp_path: Path, blocked: BlockedSave) -> None:
    writer = SampleWriter(
        tmp_path, max_bytes=1 << 20, queue_size=100, queue_bytes=2048, save=blocked, chunk_age_s=0
    )
    source = Source()
    assert writer.put(sample(source))
    assert blocked.entered.wait(30)
    assert writer.put(sample(source, rows=40))  # 1600 bytes
    assert not writer.put(sample(source, rows=20))  # 800 more would pass 2048
    blocked.gate.set()
    assert writer.flush(30)
    writer.close(30)


def test_files_stay_within_the_byte_bound_oldest_removed_first(tmp_path: Path) -> None:
    one_file = _file_size(tmp_path / "probe")
    writer = SampleWriter(tmp_path / "s", max_bytes=3 * one_file, queue_size=100, queue_bytes=1 << 20)
    source = Source()
    names: list[str] = []
    for i in range(7):  # one at a time: each sample is its own file
        assert writer.put(sample(source, value=float(i)))
        assert writer.flush(30)
        names.append(sorted(p.name for p in (tmp_path / "s" / "m" / "1").glob("samples-*.npz"))[-1])
    files = sorted((tmp_path / "s" / "m" / "1").glob("samples-*.npz"))
    assert [p.name for p in files] == names[-3:]
    assert sum(p.stat().st_size for p in files) <= 3 * one_file
    assert writer.stats.files_removed == 4 and writer.stats.bytes_on_disk <= 3 * one_file
    with np.load(files[-1]) as data:
        assert data["out:y"][0, 0] == 6.0 and data["in:x"].shape == (4, 8)
        assert list(data["rows"]) == [4]
    writer.close(30)
    # A new writer counts what the last one left, and keeps the bound with it.
    again = SampleWriter(tmp_path / "s", max_bytes=2 * one_file, queue_size=100, queue_bytes=1 << 20)
    assert again.put(sample(source, value=9.0))
    assert again.flush(30)
    assert len(list((tmp_path / "s" / "m" / "1").glob("samples-*.npz"))) == 2
    again.close(30)


def _file_size(directory: Path) -> int:
    writer = SampleWriter(directory, max_bytes=1 << 20, queue_size=10, queue_bytes=1 << 20)
    writer.put(sample(Source()))
    assert writer.flush(30)
    writer.close(30)
    return writer.stats.bytes_on_disk


def test_samples_of_one_source_are_chunked_and_fed_to_its_monitor(
    tmp_path: Path, blocked: BlockedSave
) -> None:
    monitor = DriftMonitor(reference_rows=8, window_rows=4)
    writer = SampleWriter(
        tmp_path, max_bytes=1 << 20, queue_size=100, queue_bytes=1 << 20, save=blocked, chunk_age_s=0
    )
    source = Source(monitor=monitor)
    writer.put(sample(source, rows=1))
    assert blocked.entered.wait(30)
    for _ in range(4):  # queued while the first is written: one chunk of 4 samples next
        writer.put(sample(source, rows=3))
    blocked.gate.set()
    assert writer.flush(30)
    files = sorted((tmp_path / "m" / "1").glob("samples-*.npz"))
    assert len(files) == 2 and writer.stats.samples_written == 5 and source.count == 5
    with np.load(files[1]) as data:
        assert data["out:y"].shape == (12, 2) and list(data["rows"]) == [3, 3, 3, 3]
    assert {r.tensor for r in monitor.rows()} == {"x", "y"}  # 8 reference rows, then 5 (>= 4) recent
    writer.close(30)


def test_samples_wait_for_a_chunk_to_fill_or_age_and_flush_writes_them(tmp_path: Path) -> None:
    writer = SampleWriter(tmp_path, max_bytes=1 << 20, queue_size=100, queue_bytes=1 << 20, chunk_age_s=3600)
    source = Source()
    for i in range(5):
        assert writer.put(sample(source, value=float(i)))
    assert writer.flush(30)
    (path,) = (tmp_path / "m" / "1").glob("samples-*.npz")
    with np.load(path) as data:
        assert list(data["out:y"][::4, 0]) == [0, 1, 2, 3, 4]
    writer.close(30)


def test_a_ratio_samples_every_kth_request_and_outputs_only_by_default(tmp_path: Path) -> None:
    settings = ServerSettings(cache_dir=tmp_path)
    registry = SamplingRegistry(settings)
    sampler = registry.sampler_for("m", 2, SamplePolicy(ratio=0.25))
    assert sampler is not None and registry.sampler_for("m", 3, SamplePolicy()) is None
    for i in range(12):
        sampler.offer({"x": np.full((1, 8), i, np.float32)}, {"y": np.full((1, 2), i, np.float32)})
    assert registry.flush(30)
    files = sorted((tmp_path / "samples" / "m" / "2").glob("samples-*.npz"))
    sampled = []
    for path in files:
        with np.load(path) as data:
            assert "in:x" not in data.files
            sampled += list(data["out:y"][:, 0])
    assert sampled == [3, 7, 11]
    gauges = {(name, labels["version"]): value for name, labels, value in registry.gauge_values()}
    assert gauges[("sluiceway_samples_written_total", "2")] == 3
    assert gauges[("sluiceway_samples_dropped_total", "2")] == 0
    registry.retire(sampler)  # its counters stay (a reload continues them), its drift series go
    assert {name for name, _, _ in registry.gauge_values()} == {
        "sluiceway_samples_written_total", "sluiceway_samples_dropped_total", "sluiceway_samples_lost_total"
    }  # fmt: skip
    registry.forget("m")  # the model left the index
    assert list(registry.gauge_values()) == []
    registry.close(30)


def config(**parameters: str) -> mc.ModelConfig:
    cfg = mc.ModelConfig(name="m")
    for key, value in parameters.items():
        cfg.parameters[key].string_value = value
    return cfg


def test_model_parameters_win_over_settings_and_bad_values_name_the_field(tmp_path: Path) -> None:
    settings = ServerSettings(cache_dir=tmp_path, sample_ratio=0.5)
    assert sample_policy(config(), tmp_path, settings) == SamplePolicy(ratio=0.5)
    policy = sample_policy(config(sample_ratio="1", sample_what="inputs_and_outputs"), tmp_path, settings)
    assert policy == SamplePolicy(ratio=1.0, with_inputs=True)
    validate_config(config(sample_ratio="1", sample_what="outputs", drift_reference="r.npz"), "c")
    for bad, field in (
        ({"sample_ratio": "2"}, "sample_ratio"),
        ({"sample_ratio": "nan"}, "sample_ratio"),
        ({"sample_what": "inputs"}, "sample_what"),
        ({"drift_reference": "missing.npz"}, "drift_reference"),
    ):
        with pytest.raises(ConfigError, match=field):
            sample_policy(config(**bad), tmp_path, settings)


def test_a_drift_reference_file_is_loaded_relative_to_the_model(tmp_path: Path) -> None:
    with open(tmp_path / "ref.npz", "wb") as file:
        save_npz(file, {"out:y": np.zeros((5, 2), np.float32), "rows": np.array([5])})
    model = config(drift_reference="ref.npz")
    model.max_batch_size = 8
    model.output.add(name="y", data_type=mc.TYPE_FP32, dims=[2])  # the reference must fit a tensor
    policy = sample_policy(model, tmp_path, ServerSettings(cache_dir=tmp_path))
    assert policy.reference is not None and set(policy.reference) == {"out:y"}
    np.savez(tmp_path / "empty.npz", rows=np.array([5]))
    with pytest.raises(ConfigError, match="no 'in:' or 'out:' arrays"):
        sample_policy(config(drift_reference="empty.npz"), tmp_path, ServerSettings(cache_dir=tmp_path))


def test_a_drift_reference_is_bounded_unpacked_and_must_be_an_npz(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compressed .npz unpacks about 1000:1 (195 KB to 200 MB): np.load of a client's file read
    all of it, unbounded. The archive's sizes are checked first; a .npy had ended in a TypeError."""
    from server.observability import sampling

    settings = ServerSettings(cache_dir=tmp_path)
    np.savez_compressed(tmp_path / "bomb.npz", **{"out:y": np.zeros((1000, 100), np.float32)})
    assert (tmp_path / "bomb.npz").stat().st_size < 4096  # 400 KB unpacked
    monkeypatch.setattr(sampling, "MAX_REFERENCE_BYTES", 100_000)
    too_big = r"'drift_reference': bomb\.npz unpacks to \d+ bytes, past the limit 100000"
    with pytest.raises(ConfigError, match=too_big):
        sample_policy(config(drift_reference="bomb.npz"), tmp_path, settings)
    np.save(tmp_path / "plain.npy", np.zeros(3))
    with pytest.raises(ConfigError, match=r"cannot read plain\.npy: not an \.npz archive"):
        sample_policy(config(drift_reference="plain.npy"), tmp_path, settings)
    with pytest.raises(ConfigError, match="holds a NUL character"):
        sample_policy(config(drift_reference="a\0b.npz"), tmp_path, settings)


def test_a_failed_write_is_counted_and_leaves_no_partial_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A full disk lost 5,000 samples with no counter moving, and each failure left a `.tmp` file
    (outside the bytes bound) that survived restarts; a dead writer's ones are removed at start.
    Each failure is one log line (it had been a 40-50 line traceback)."""

    def full_disk(file: IO[bytes], arrays: Mapping[str, AnyArray]) -> None:
        file.write(b"partial")
        raise OSError(28, "No space left on device")

    writer = SampleWriter(
        tmp_path / "s", max_bytes=1 << 20, queue_size=10, queue_bytes=1 << 20, save=full_disk
    )
    source = Source()
    assert writer.put(sample(source))
    assert writer.flush(30)
    writer.close(30)
    assert source.lost_count == 1 and source.count == 0 and writer.stats.write_errors == 1
    assert list((tmp_path / "s" / "m" / "1").iterdir()) == []
    failed = [r for r in caplog.records if "writing 1 samples under" in r.getMessage()]
    assert len(failed) == 1 and failed[0].exc_info is None
    assert failed[0].getMessage().endswith("failed: No space left on device")
    stale = tmp_path / "s" / "m" / "1" / ".samples-00000000000000000001-999999999-000001.npz.tmp"
    stale.write_bytes(b"left by a process that died")
    SampleWriter(tmp_path / "s", max_bytes=1 << 20, queue_size=10, queue_bytes=1 << 20).close(30)
    assert not stale.exists()


def test_bf16_tensors_are_sampled_as_fp32_and_watched_for_drift(tmp_path: Path) -> None:
    """numpy wrote BF16 samples as raw '|V2' that no reader could use, and drift skipped them ("not
    enough sampled rows yet") where an FP16 model of the same data was scored."""
    import ml_dtypes

    monitor = DriftMonitor(reference_rows=4, window_rows=4)
    writer = SampleWriter(tmp_path, max_bytes=1 << 20, queue_size=100, queue_bytes=1 << 20, chunk_age_s=3600)
    source = Source(monitor=monitor)
    values = np.array([[1.5, -2.0], [0.0, 3.25]], dtype=ml_dtypes.bfloat16)
    for _ in range(4):
        assert writer.put(Sample(source, {}, {"y": values}, 0, 64))
    assert writer.flush(30)
    (path,) = (tmp_path / "m" / "1").glob("samples-*.npz")
    with np.load(path) as data:
        assert data["out:y"].dtype == np.float32
        assert data["out:y"][:2].tolist() == [[1.5, -2.0], [0.0, 3.25]]
    assert {r.tensor for r in monitor.rows()} == {"y"}
    writer.close(30)
