"""Survivors of the 2026-12-05 mutation run in loadtest/gpu_report.py: the Markdown table written as
UTF-8 whatever the locale. The subprocess test in test_mutants_gpu_report.py shows it too, but a child
process runs the original code under mutmut, so the mutants (`encoding=None`, no encoding) survived;
here the locale's codec is switched in this process for the call."""

from __future__ import annotations

import codecs
import locale
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from loadtest.gpu_report import RAW, Report, Row, write


@contextmanager
def ascii_locale() -> Iterator[None]:
    """LC_CTYPE "C" for the block: a file opened without an encoding then uses ASCII (outside Python's
    UTF-8 mode, where it stays UTF-8 and the case cannot show; then skipped)."""
    before = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    try:
        # What open() uses without an encoding (getencoding() is 3.11's; this one is on 3.10 too).
        codec = locale.getpreferredencoding(False)
        if codecs.lookup(codec).name != "ascii":
            pytest.skip(f"the C locale's codec here is {codec}, not ASCII")
        yield
    finally:
        locale.setlocale(locale.LC_CTYPE, before)


def test_a_non_ascii_note_is_written_as_utf8_under_an_ascii_locale(tmp_path: Path) -> None:
    """A provider's note with a micro sign and a dash: the locale's ASCII codec could not write it
    (UnicodeEncodeError, no table at all after a device session)."""
    note = "\u00b5s \u2014 ok"
    with ascii_locale():
        md, js = write(Report(False, [], [Row("m", "CUDA", RAW, 1, 1.0, note=note)]), tmp_path)
    assert md == tmp_path / "gpu_check.md" and js == tmp_path / "gpu_check.json"
    assert f"| {note} |" in md.read_text(encoding="utf-8")
    assert note.encode("utf-8") in md.read_bytes()
