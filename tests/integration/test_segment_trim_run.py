"""`python -m loadtest.segment_trim` in its shortest mode: a `--workers 2 --shared-sessions=all`
server, a burst answered, one reading of the segment files. (The trim itself is tested in
tests/unit/test_segment_pool.py and test_segment_maps.py; the full watch's figures are in
RELIABILITY.md, forty-first session.)"""

from __future__ import annotations

import re

import pytest

from loadtest import segment_trim


def test_the_short_mode_answers_its_burst_and_reads_the_segments(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--connections", "2", "--requests", "2", "--rows", "2", "--watch-s", "0"]
    assert segment_trim.main(args) == 0
    out = capsys.readouterr().out
    assert "burst: 4 of 4 requests of 2 rows answered" in out, out
    reading = re.search(r"^\| 0 \| (\d+) \| (\d+) \|$", out, re.MULTILINE)
    assert reading is not None, out
    assert int(reading.group(1)) >= 1  # the burst's segments: at least a MiB each, not yet trimmed
