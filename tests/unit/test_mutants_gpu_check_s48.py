"""Survivors of the 2026-12-05 mutation run in loadtest/gpu_check.py: the progress line flushed before
each provider's check. The interpreter's own stderr is line-buffered, so only a block-buffered stderr
(a caller that replaced it, as a harness capturing it to a file does) shows the flush: without it the
line waited in the buffer while the provider ran, and was lost if the time limit killed the process."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import pytest

from loadtest import gpu_check as gc
from loadtest.gpu_plan import Plan
from loadtest.gpu_report import Report
from tests.unit.test_mutants_gpu_check_run import Main


class SeesStderr(Main):
    """main's fakes; each check records what had reached stderr's bytes when it started."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, raw: io.BytesIO) -> None:
        super().__init__(monkeypatch, providers=())
        self.raw = raw
        self.seen: list[str] = []

    def check(
        self, demo: Path, work: Path, provider: Any, plan: Plan, budget: Any, report: Report, tool: Any
    ) -> None:
        self.seen.append(self.raw.getvalue().decode())
        super().check(demo, work, provider, plan, budget, report, tool)


def test_each_progress_line_reaches_a_block_buffered_stderr_before_its_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    raw = io.BytesIO()
    stderr = io.TextIOWrapper(raw, encoding="utf-8", line_buffering=False, write_through=False)
    main = SeesStderr(monkeypatch, raw)
    monkeypatch.setattr(sys, "stderr", stderr)
    assert gc.main(["--dry", "--providers", "cuda,cpu"]) == 0
    first = "gpu_check: CPU (dry run of the CUDA config) (123 s left)\n"
    second = "gpu_check: CPU (dry run of the CPU config) (123 s left)\n"
    assert main.seen == [first, first + second]
