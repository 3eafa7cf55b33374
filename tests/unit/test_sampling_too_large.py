"""A sample larger than sample_max_bytes is dropped, and said once in the log: it had been counted
as if the writer's queue were full, with no line (a tester raised the queue's size, to no avail;
session 49)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.unit.test_mutants_sampling_writer_s47 import WAIT_S, Harness, Source, sample
from tests.unit.test_mutants_sampling_writer_s47 import harness as harness


def test_a_sample_over_max_bytes_is_dropped_and_said_once(
    tmp_path: Path,
    harness: Harness,
    caplog: pytest.LogCaptureFixture,
) -> None:
    writer = harness.writer(tmp_path, max_bytes=1000)
    source = Source()
    with caplog.at_level(logging.WARNING, logger="server.observability.sampling_writer"):
        assert not writer.put(sample(source, 1001))
        assert not writer.put(sample(source, 5000))
        assert writer.put(sample(source, 1000))  # at the bound: kept
    said = [r.getMessage() for r in caplog.records if "sample_max_bytes" in r.getMessage()]
    assert said == ["a sample of 1001 bytes is over sample_max_bytes (1000): dropped (samples_dropped_total)"]
    writer.close(WAIT_S)
    assert writer.stats.samples_written == 1
