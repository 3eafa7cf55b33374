"""`python -m loadtest.host_ceiling` in its shortest mode: a session host, one stand-in worker
that opens the slice model through it (checking one answer: each row's first number), a short
window of batches, and the line the benchmark prints. (Its figures: BENCHMARKS.md section 41.)"""

from __future__ import annotations

import re

import pytest

from loadtest import host_ceiling


def test_one_point_runs_batches_through_a_session_host_and_reads_its_cpu() -> None:
    line = host_ceiling.measure(drivers=1, threads=1, rows=2, seconds=0.3)
    found = re.fullmatch(
        r"1 drivers x 1 threads, batches of 2 \(cpu\): +([\d.]+) rows/s, host CPU ([\d.]+) ms a row "
        r"\((\d+)% of a core\), host runs of ([\d.]+) rows",
        line,
    )
    assert found is not None, line
    assert float(found.group(1)) > 0  # batches ran in the window
    assert float(found.group(4)) == 2.0  # one sender: every run is its batch alone


def test_a_driver_that_cannot_open_the_model_fails_the_point(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host_ceiling, "write_model", lambda path: path.write_bytes(b"not onnx"))
    with pytest.raises(RuntimeError, match="did not open the model"):
        host_ceiling.measure(drivers=1, threads=1, rows=1, seconds=0.1)
