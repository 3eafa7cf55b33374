"""examples/vad/stream_wav.py refuses a --sequence-id the server cannot take before it sends
anything (exit 2, one line): 0 had ended in a RuntimeError traceback, -3 in a CancelledError."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "vad" / "stream_wav.py"


@pytest.mark.parametrize("sid", ["0", "-3", str(2**64)])
def test_a_sequence_id_outside_uint64_or_zero_is_a_usage_error(sid: str, tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "none.wav"), "--sequence-id", sid],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2, run.stderr
    assert f"--sequence-id must be 1 .. 2**64-1, got {sid}" in run.stderr
    assert "Traceback" not in run.stderr
