"""loadtest/result_lines.py: the summary line the loadtest scripts print for each target and step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loadtest.result_lines import main, result_line


def _entry(p50: float | None, p99: float | None, goodput: float | None = 9.5) -> dict[str, Any]:
    return {
        "target": "one",
        "step": {"mode": "closed", "level": 16.0},
        "throughput_rps": 76.71,
        "goodput_rps": goodput,
        "latency_us": {"p50": p50, "p99": p99},
        "errors": {"UNAVAILABLE": 2},
    }


def test_a_line_has_the_rate_the_percentiles_in_ms_the_goodput_and_the_errors() -> None:
    assert result_line("resnet", _entry(208_380.0, 235_904.0)) == (
        "            resnet            one at   16:     76.7 req/s  p50  208.38 ms  p99  235.90 ms"
        "  goodput      9.5/s  errors {'UNAVAILABLE': 2}"
    )


def test_no_success_prints_dashes_and_no_goodput_zero() -> None:
    line = result_line("mlp", _entry(None, None, goodput=None))
    assert "p50       - ms  p99       - ms  goodput      0.0/s" in line


def test_main_prints_every_entry_and_refuses_other_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"results": [_entry(1000.0, 2000.0), _entry(3000.0, 4000.0)]}))
    assert main([str(results), "mlp"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0].startswith("               mlp            one at   16:")
    assert main([str(results)]) == 2
    assert capsys.readouterr().err.startswith("usage: python -m loadtest.result_lines")
