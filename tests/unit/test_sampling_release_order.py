"""A written chunk's bytes leave `sample_queue_bytes` before its source hears of the write: a producer
woken by that count must find the room. A test under load had a put refused right after it woke
(`test_tester2_h20_sample_pressure`: "sample 160 refused again after a chunk was written")."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from server.observability.sampling_writer import Sample, SampleWriter

QUEUE_BYTES = 64 * 1024


class PuttingSource:
    """On its first write, puts a sample as large as the whole queue from inside the callback."""

    def __init__(self) -> None:
        self.directory = Path("m/1")
        self.monitor = None
        self.load_ns = 1
        self.writer: SampleWriter | None = None
        self.accepted: list[bool] = []
        self.done = threading.Event()

    def wrote(self, samples: int) -> None:
        if not self.accepted:
            assert self.writer is not None
            self.accepted.append(self.writer.put(sample(self, QUEUE_BYTES)))
            self.done.set()

    def lost(self, samples: int) -> None:
        self.done.set()


def sample(source: PuttingSource, nbytes: int) -> Sample:
    values = np.zeros((1, 4), np.float32)
    return Sample(source, {"x": values}, {"y": values}, time.time_ns(), nbytes)


def test_a_written_chunks_bytes_are_free_when_its_source_hears_of_it(tmp_path: Path) -> None:
    writer = SampleWriter(
        tmp_path, max_bytes=16 << 20, queue_size=64, queue_bytes=QUEUE_BYTES, chunk_age_s=3600
    )
    source = PuttingSource()
    source.writer = writer
    try:
        # Over half the queue's bytes in one open chunk: it is written at once (not at its age).
        assert writer.put(sample(source, QUEUE_BYTES // 2 + 1))
        assert source.done.wait(30), "the chunk was never written"
    finally:
        writer.close(10)
    assert source.accepted == [True], "the written chunk's bytes still held the queue when it was counted"
