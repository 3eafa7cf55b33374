"""Sampling BYTES tensors: chunks the size of the bytes sent (fixed-width bytes had padded every
value to the widest of the chunk, 100-600x), sizes counted by the values' bytes, and samples not
written at a forced shutdown counted lost. And malformed `sample_ratio` / `drift --load` values
refused."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

import numpy as np
import pytest

from protos import model_config_pb2 as mc
from server.cli import main
from server.models.config import ConfigError
from server.observability.drift import DriftMonitor
from server.observability.sample_layout import AnyArray, bytes_tensor, stored_bytes
from server.observability.sampling import ModelSampler, SamplePolicy, sample_policy
from server.observability.sampling_writer import Sample, SampleWriter, save_npz
from server.settings import ServerSettings

KIB = 1024
BIG = 64 * KIB


class Source:
    def __init__(self) -> None:
        self.directory = Path("b/1")
        self.monitor = None
        self.load_ns = 0
        self.written = 0
        self.lost_count = 0

    def wrote(self, samples: int) -> None:
        self.written += samples

    def lost(self, samples: int) -> None:
        self.lost_count += samples


def strings(values: list[bytes], shape: tuple[int, ...]) -> AnyArray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array.reshape(shape)


def identity_sampler(writer: SampleWriter) -> ModelSampler:
    """Model `b` of the report: X -> Y, BYTES, every request sampled with its inputs."""
    return ModelSampler("b", 1, SamplePolicy(ratio=1.0, with_inputs=True), writer, DriftMonitor(10, 10))


def offer_identity(sampler: ModelSampler, values: list[bytes]) -> None:
    tensor = strings(values, (1, len(values)))
    sampler.offer({"X": tensor}, {"Y": tensor})


def writer_at(tmp_path: Path, **kwargs: int) -> SampleWriter:
    terms = {"max_bytes": 256 << 20, "queue_size": 1024, "queue_bytes": 64 << 20, **kwargs}
    return SampleWriter(tmp_path, chunk_age_s=3600, **terms)


def chunk_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "b" / "1").glob("samples-*.npz"))


@pytest.mark.parametrize(
    "requests",
    [
        [[b"x" * BIG] + [b""] * 99],  # one [1, 100] request: had made a 12.8 MB chunk
        [[b"x" * BIG]] + [[b"a"]] * 100,  # then 100 [1, 1] of b"a": had widened to 13 MB
    ],
    ids=["one_wide_value_among_empty_ones", "one_wide_request_then_narrow_ones"],
)
def test_a_bytes_chunk_is_about_the_size_of_the_bytes_sent(
    tmp_path: Path, requests: list[list[bytes]]
) -> None:
    writer = writer_at(tmp_path)
    sampler = identity_sampler(writer)
    for values in requests:
        offer_identity(sampler, values)
    assert writer.flush(30)
    writer.close(30)
    sent = 2 * sum(len(v) for values in requests for v in values)  # input and output
    (path,) = chunk_files(tmp_path)
    assert sampler.written == len(requests)
    # Values, their int64 lengths, rows, times and the zip's headers: a few KiB over the values.
    assert path.stat().st_size < sent + 16 * KIB
    with np.load(path) as data:  # no pickle
        got = bytes_tensor(data, "in:X")
        assert bytes_tensor(data, "out:Y").tolist() == got.tolist()
        assert list(data["rows"]) == [1] * len(requests)
    if len(requests) == 1:
        assert got.shape == (1, 100) and got.reshape(-1).tolist() == requests[0]
    else:
        assert got.shape == (101, 1) and got.reshape(-1).tolist() == [v[0] for v in requests]


def test_bytes_round_trip_exactly_in_every_layout(tmp_path: Path) -> None:
    """NULs anywhere, empty values, str outputs (UTF-8, as on the wire: non-ASCII text had failed
    the fixed-width conversion), a 2-D tensor's shape; chunks of the earlier layouts still read."""
    first = [b"ab\x00", b"\x00\x00", b"\x00x", b"", b"\x00", b"\xff" * 3]
    second = [b"longer value\x00\x00", b"", b"z", b"\x00"]
    writer = writer_at(tmp_path)
    source = Source()
    for values in (first, second):
        shape = (len(values) // 2, 2)
        text = strings([v.decode("latin-1") + "é" for v in values], shape)
        inputs = {"s": strings(values, shape), "x": np.ones((shape[0], 3), np.float32)}
        sample = Sample(source, inputs, {"t": text}, 0, 0)
        sample.nbytes = sum(stored_bytes(a) for a in (*inputs.values(), text))
        assert writer.put(sample)
    assert writer.flush(30)
    writer.close(30)
    (path,) = chunk_files(tmp_path)
    with np.load(path) as data:
        assert set(data.files) >= {"bytes:in:s", "len:in:s", "in:x", "bytes:out:t", "len:out:t"}
        assert "in:s" not in data.files  # no numeric-looking array for drift to score
        assert data["len:in:s"].shape == (5, 2) and data["in:x"].shape == (5, 3)
        sent = bytes_tensor(data, "in:s")
        text_out = bytes_tensor(data, "out:t")
    assert sent.reshape(-1).tolist() == first + second
    assert text_out.reshape(-1).tolist() == [(v.decode("latin-1") + "é").encode() for v in first + second]
    # The layouts before: fixed-width with lengths (trailing NULs restored), fixed-width alone.
    values = np.array([b"ab\x00", b"", b"\x00\x00"], dtype=np.bytes_)
    earlier = {"in:s": values, "len:in:s": np.array([3, 0, 2], np.int64)}
    assert bytes_tensor(earlier, "in:s").tolist() == [b"ab\x00", b"", b"\x00\x00"]
    assert bytes_tensor({"in:s": values}, "in:s").tolist() == [b"ab", b"", b""]


def test_the_queue_counts_a_bytes_sample_by_its_values(tmp_path: Path) -> None:
    """An object array's nbytes is 8 a value: a 64 KiB value had passed a 32 KiB queue as 16 bytes."""
    writer = writer_at(tmp_path, queue_bytes=32 * KIB)
    sampler = identity_sampler(writer)
    offer_identity(sampler, [b"x" * BIG])
    assert (sampler.offered, sampler.dropped) == (1, 1)
    offer_identity(sampler, [b"x" * KIB] * 4)  # 8 KiB and 64 bytes of lengths: within the bound
    assert sampler.dropped == 1
    assert stored_bytes(strings([b"x" * BIG, b""], (1, 2))) == BIG + 16
    assert stored_bytes(strings(["é"], (1,))) == 2 + 8
    # A sample larger than every chunk kept would be removed as soon as written: dropped.
    small = writer_at(tmp_path / "small", max_bytes=16 * KIB)
    assert not identity_put(small, b"x" * (16 * KIB))
    assert writer.flush(30) and small.flush(30)
    writer.close(30)
    small.close(30)


def identity_put(writer: SampleWriter, value: bytes) -> bool:
    tensor = strings([value], (1, 1))
    return writer.put(Sample(Source(), {"X": tensor}, {"Y": tensor}, 0, 2 * stored_bytes(tensor)))


class HeldSave:
    """A save that blocks until released: a chunk still being written when the server stops."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()

    def __call__(self, file: IO[bytes], arrays: Mapping[str, AnyArray]) -> None:
        self.entered.set()
        assert self.release.wait(30)
        save_npz(file, arrays)


@pytest.fixture()
def held() -> Iterator[HeldSave]:
    save = HeldSave()
    yield save
    save.release.set()


def test_samples_not_written_when_close_gives_up_are_counted_lost(
    tmp_path: Path, held: HeldSave, caplog: pytest.LogCaptureFixture
) -> None:
    """At SIGTERM the process had exited with the daemon thread mid-write: a 394 MB .tmp left, the
    samples on no counter."""
    writer = SampleWriter(tmp_path, 256 << 20, 1024, 64 << 20, save=held, chunk_age_s=0)
    source = Source()
    tensor = strings([b"v"], (1, 1))
    for _ in range(3):  # one being written (held), two queued behind it
        assert writer.put(Sample(source, {"X": tensor}, {"Y": tensor}, 0, 18))
        assert held.entered.wait(30)
    with caplog.at_level(logging.ERROR, logger="server.observability.sampling_writer"):
        writer.close(0.05)  # the thread is held: it cannot finish in time
    assert source.lost_count == 3 and source.written == 0
    assert [r for r in caplog.records if "counted lost" in r.getMessage()] != []
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1  # one line
    assert list((tmp_path / "b" / "1").glob(".samples-*.tmp")) == []  # removed, not left to a restart
    held.release.set()  # the thread goes on: what it wrote is not kept, nor counted twice
    writer._thread.join(30)
    assert not writer._thread.is_alive()
    assert list((tmp_path / "b" / "1").glob("*samples-*")) == []
    assert (source.lost_count, source.written) == (3, 0)


@pytest.mark.parametrize("text", ["0.1_0", "1_0e-1", " 0.1", "0.1 ", "inf", "nan", "-0.1", "\u0661", ""])
def test_a_malformed_sample_ratio_is_refused_naming_the_field(tmp_path: Path, text: str) -> None:
    """float() had taken "0.1_0" as 0.1."""
    config = mc.ModelConfig(name="b")
    config.parameters["sample_ratio"].string_value = text
    with pytest.raises(ConfigError, match=r"'sample_ratio' must be a number in \[0, 1\]"):
        sample_policy(config, tmp_path, ServerSettings(cache_dir=tmp_path))


@pytest.mark.parametrize(
    ("text", "ratio"), [("0.1", 0.1), ("1", 1.0), ("0", 0.0), (".5", 0.5), ("1e-1", 0.1)]
)
def test_a_decimal_sample_ratio_is_taken(tmp_path: Path, text: str, ratio: float) -> None:
    config = mc.ModelConfig(name="b")
    config.parameters["sample_ratio"].string_value = text
    assert sample_policy(config, tmp_path, ServerSettings(cache_dir=tmp_path)).ratio == ratio


@pytest.mark.parametrize("load", ["", "1_0", " 7", "-3", "latest"])
def test_a_bad_drift_load_is_a_usage_error(
    tmp_path: Path, load: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--load ""` had been taken as newest, and a bad id exited 1, like a folder without samples."""
    with pytest.raises(SystemExit) as exited:
        main(["drift", "b", "--sample-dir", str(tmp_path), "--load", load])
    assert exited.value.code == 2
    assert "--load: must be 'newest', 'all' or a load's id" in capsys.readouterr().err
    # The words and an id are taken: here a version folder without samples yet, which exits 1;
    # an id no file names exits 2 saying so (not the flag's spelling).
    (tmp_path / "b" / "1").mkdir(parents=True)
    for good in ("newest", "all"):
        assert main(["drift", "b", "--sample-dir", str(tmp_path), "--load", good]) == 1
    assert main(["drift", "b", "--sample-dir", str(tmp_path), "--load", "12"]) == 2
    assert "no samples of load 12" in capsys.readouterr().err


def test_samples_in_an_open_chunk_count_against_the_queue_bytes_until_written(tmp_path: Path) -> None:
    """The thread took samples off the queue into its open chunk and stopped counting them: a
    32 KiB sample_queue_bytes held 32 KiB queued plus a whole chunk (up to 4 MiB per sampled version).
    An open chunk over half the queue's bytes is written at once (SampleWriter._relieve): held in
    its save here, its bytes still count."""
    saving = threading.Event()
    gate = threading.Event()

    def held_save(file: IO[bytes], arrays: Mapping[str, AnyArray]) -> None:
        saving.set()
        assert gate.wait(30)
        save_npz(file, arrays)

    terms = {"max_bytes": 256 << 20, "queue_size": 1024, "queue_bytes": 32 * KIB}
    writer = SampleWriter(tmp_path, chunk_age_s=3600, save=held_save, **terms)  # 4 MiB chunks
    value = b"x" * (10 * KIB - 12)  # a sample of X and Y: 2 * (value + 8 of length) = 20 KiB - 8
    assert identity_put(writer, value)
    assert saving.wait(30)  # the thread has moved it into its chunk, being written
    assert not identity_put(writer, value)  # before: taken, the first no longer counted
    gate.set()
    assert writer.flush(30)  # the chunk is written: its bytes are free again
    assert identity_put(writer, value)
    assert writer.flush(30)
    assert writer.stats.samples_written == 2
    writer.close(30)
