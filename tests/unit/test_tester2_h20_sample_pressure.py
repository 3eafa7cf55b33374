"""The sample writer's open chunks count against `sample_queue_bytes` until written: with a queue
smaller than a chunk (or many sampled versions, each with a chunk open) they held the whole bound
until the 10 s chunk age, and every sample meanwhile was refused (3,007 of 3,039 over 3 s with a
64 KiB queue). Open chunks are written early once they hold over half the queue's bytes."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from server.observability.sampling_writer import Sample, SampleWriter

SAMPLE_BYTES = 2048
QUEUE_BYTES = 64 * 1024  # 32 samples; a chunk is 1 MiB (max_bytes / 16)


class Source:
    """Counts what the writer wrote of its samples; a waiter wakes on each write."""

    def __init__(self, directory: str, changed: threading.Condition) -> None:
        self.directory = Path(directory)
        self.monitor = None
        self.load_ns = 1
        self.written = 0
        self.lost_count = 0
        self.changed = changed  # shared by every source of a test

    def wrote(self, samples: int) -> None:
        with self.changed:
            self.written += samples
            self.changed.notify_all()

    def lost(self, samples: int) -> None:
        self.lost_count += samples


def sample(source: Source) -> Sample:
    values = np.zeros((1, 256), np.float32)
    return Sample(source, {"x": values}, {"y": values}, time.time_ns(), SAMPLE_BYTES)


@pytest.mark.parametrize("versions", [1, 40])
def test_a_small_queue_keeps_taking_samples_as_open_chunks_are_written(tmp_path: Path, versions: int) -> None:
    # A chunk age of an hour: only the queue's pressure can write a chunk before close.
    writer = SampleWriter(
        tmp_path, max_bytes=16 << 20, queue_size=1024, queue_bytes=QUEUE_BYTES, chunk_age_s=3600
    )
    changed = threading.Condition()
    sources = [Source(f"m{i}/1", changed) for i in range(versions)]
    try:
        for i in range(200):  # over 6 times the queue's bytes
            source = sources[i % versions]
            deadline = time.monotonic() + 10
            while True:
                with changed:
                    before = sum(s.written for s in sources)
                if writer.put(sample(source)):
                    break
                # Refused: the open chunks hold the bound; a chunk written since `before` frees room.
                # Counted before the put: a chunk's bytes are freed before its source hears of the
                # write, so a write heard of after a refused put freed its bytes after that put
                # (counted after the refusal, a write that freed room the samples before had taken
                # woke this thread to no room, and the test failed under load).
                with changed:
                    wrote = changed.wait_for(
                        lambda b=before: sum(s.written for s in sources) > b,
                        max(0.0, deadline - time.monotonic()),
                    )
                assert wrote, f"nothing written within 10 s after {i} samples"
    finally:
        writer.close(10)
    assert sum(s.written for s in sources) == 200
    assert sum(s.lost_count for s in sources) == 0
