"""Mutation-killing tests for loadtest/gpu_report.py: the GPU check's tables, cell by cell."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from loadtest.gpu_report import (
    DRY_BANNER,
    PA_CUDA,
    PA_SHM,
    PA_WIRE,
    RAW,
    SERVED,
    Report,
    Row,
    fell_back,
    markdown,
    summary_rows,
    transport_rows,
    write,
)

FELL = "ran on CPUExecutionProvider (CUDAExecutionProvider: did not start)"


def gpu_rows() -> list[Row]:
    return [
        Row("resnet", "CUDA", RAW, 1, 500.0, note="first batch slow"),
        Row("resnet", "CUDA", RAW, 8, 2000.0, 8.0, 1.234, 2.345),
        Row("resnet", "CUDA", RAW, 64, 4000.0),
        Row("resnet", "CUDA", SERVED, 1, 400.0, 1.0, 2.0, 3.0),
        Row("resnet", "CUDA", SERVED, 16, 2400.0, 9.5, 6.125, 9.0),
        Row("resnet", "CUDA", SERVED, 64, 3400.0, 30.456, 18.789, 25.678, "12 padded shape changes"),
        Row("resnet", "CUDA", PA_WIRE, 64, 800.0, 30.0, 70.0, 90.0),
        Row("resnet", "CUDA", PA_SHM, 64, 3200.0, 48.0, 20.0, 30.0),
        Row("resnet", "CUDA", PA_CUDA, 64, 4400.0, 56.0, 16.0, 22.0),
    ]


def gpu_report() -> Report:
    return Report(False, ["GPU: H200", "onnxruntime 1.20"], gpu_rows(), ["warn a", "warn b"])


GPU_MD = """\
# GPU check

- GPU: H200
- onnxruntime 1.20

## Summary

| model | provider | raw best rows/s (batch) | served rows/s (in flight) | served / raw best \
| batching gain (most / 1 in flight) | p99 ms (in flight) | notes |
|---|---|---:|---:|---:|---:|---:|---|
| resnet | CUDA | 4,000.0 (64) | 3,400.0 (64) | 0.85 | 8.50 | 9.00 (16) \
| first batch slow; 12 padded shape changes |

## Transport: perf_analyzer over the wire and with shared memory

| model | provider | in flight | wire rows/s | shm rows/s | shm / wire | shm / raw best \
| CUDA shm rows/s | CUDA shm / raw best |
|---|---|---|---:|---:|---:|---:|---:|---:|
| resnet | CUDA | 64 | 800.0 | 3,200.0 | 4.00 | 0.80 | 4,400.0 | 1.10 |

## Measurements

| model | provider | measure | level | rows/s | avg batch | p50 ms | p99 ms | note |
|---|---|---|---|---:|---:|---:|---:|---|
| resnet | CUDA | raw onnxruntime | batch 1 | 500.0 | - | - | - | first batch slow |
| resnet | CUDA | raw onnxruntime | batch 8 | 2,000.0 | 8.00 | 1.23 | 2.35 |  |
| resnet | CUDA | raw onnxruntime | batch 64 | 4,000.0 | - | - | - |  |
| resnet | CUDA | served | 1 in flight | 400.0 | 1.00 | 2.00 | 3.00 |  |
| resnet | CUDA | served | 16 in flight | 2,400.0 | 9.50 | 6.12 | 9.00 |  |
| resnet | CUDA | served | 64 in flight | 3,400.0 | 30.46 | 18.79 | 25.68 | 12 padded shape changes |
| resnet | CUDA | served, perf_analyzer | 64 in flight | 800.0 | 30.00 | 70.00 | 90.00 |  |
| resnet | CUDA | served, perf_analyzer, system shm | 64 in flight | 3,200.0 | 48.00 | 20.00 | 30.00 |  |
| resnet | CUDA | served, perf_analyzer, CUDA shm | 64 in flight | 4,400.0 | 56.00 | 16.00 | 22.00 |  |

## Server warnings

```
warn a
warn b
```
"""


def test_gpu_report_markdown_is_exactly_the_expected_document() -> None:
    """Every heading, column, ratio and digit of a GPU run's report, as one string."""
    assert markdown(gpu_report()) == GPU_MD


def test_shm_over_raw_best_divides_by_raw_rows_only() -> None:
    """perf_analyzer's or served rates above raw's best are not taken as raw's best."""
    (t,) = transport_rows(gpu_rows())
    assert (t["shm_over_raw_best"], t["cuda_over_raw_best"]) == (3200.0 / 4000.0, 4400.0 / 4000.0)


def test_summary_best_raw_batch_is_the_fastest_even_against_a_zero_rate() -> None:
    """A raw point measured at 0 rows/s never outranks a measured positive one."""
    rows = [Row("m", "CUDA", RAW, 1, 0.0), Row("m", "CUDA", RAW, 8, 0.5)]
    (s,) = summary_rows(rows)
    assert (s["raw_best_rows_s"], s["raw_best_batch"]) == (0.5, 8)


def test_summary_p99_is_read_at_the_middle_of_two_levels() -> None:
    """With two served levels the p99 column is the upper one's (index len // 2)."""
    rows = [Row("m", "CUDA", SERVED, 1, 10.0, p99_ms=1.0), Row("m", "CUDA", SERVED, 16, 40.0, p99_ms=7.0)]
    (s,) = summary_rows(rows)
    assert (s["p99_level"], s["p99_ms"], s["batching_gain"]) == (16, 7.0, 4.0)


def test_summary_of_raw_only_rows_shows_dashes_for_the_served_columns() -> None:
    """No served point: served, ratios and p99 are dashes, level placeholders too."""
    text = markdown(Report(False, [], [Row("m", "CUDA", RAW, 4, 123.456)]))
    assert "| m | CUDA | 123.5 (4) | - (-) | - | - | - (-) |  |\n" in text


def dry_rows() -> list[Row]:
    return [
        Row("resnet", "CUDA", RAW, 8, 90.0, note=FELL),
        Row("resnet", "CUDA", PA_WIRE, 16, 30.0),
        Row("resnet", "CUDA", PA_SHM, 16, 45.0),
    ]


DRY_MD = f"""\
# GPU check: CPU DRY RUN (not GPU figures)

{DRY_BANNER}

- CPU: test

## Summary

| model | provider | raw best rows/s (batch) | served rows/s (in flight) | served / raw best \
| batching gain (most / 1 in flight) | p99 ms (in flight) | notes |
|---|---|---:|---:|---:|---:|---:|---|
| resnet | CUDA | 90.0 (8) | - (-) | - | - | - (-) | {FELL} |

## Transport: perf_analyzer over the wire and with shared memory

| model | provider | in flight | wire rows/s | shm rows/s | shm / wire | shm / raw best |
|---|---|---|---:|---:|---:|---:|
| resnet | CUDA | 16 | 30.0 | 45.0 | 1.50 | 0.50 |

## Measurements

| model | provider | measure | level | rows/s | avg batch | p50 ms | p99 ms | note |
|---|---|---|---|---:|---:|---:|---:|---|
| resnet | CUDA | raw onnxruntime | batch 8 | 90.0 | - | - | - | {FELL} |
| resnet | CUDA | served, perf_analyzer | 16 in flight | 30.0 | - | - | - |  |
| resnet | CUDA | served, perf_analyzer, system shm | 16 in flight | 45.0 | - | - | - |  |
"""


def test_dry_report_markdown_is_exactly_the_expected_document() -> None:
    """A dry run: its title and banner, no CUDA shm columns, no provider suffix, no warnings."""
    assert DRY_BANNER.startswith("**CPU DRY RUN: not GPU figures.**")
    assert markdown(Report(True, ["CPU: test"], dry_rows())) == DRY_MD


def fallback_rows() -> list[Row]:
    return [
        Row("resnet", "CUDA", RAW, 8, 90.0, note=FELL),
        Row("resnet", "TensorRT FP16", RAW, 8, 80.0, note=FELL),
        Row("resnet", "CUDA", SERVED, 16, 70.0, note="x"),
        Row("resnet", "TensorRT FP16", SERVED, 16, 60.0),
        Row("resnet", "CPU", RAW, 8, 95.0, note=FELL),
    ]


FALLBACK_MD = f"""\
# GPU check: CUDA, TensorRT FP16 DID NOT START (those rows are not GPU figures)

**CUDA, TensorRT FP16: the provider did not start; its rows ran on the CPU provider and are CPU \
figures, not GPU ones** (see each row's note and the server warnings).


## Summary

| model | provider | raw best rows/s (batch) | served rows/s (in flight) | served / raw best \
| batching gain (most / 1 in flight) | p99 ms (in flight) | notes |
|---|---|---:|---:|---:|---:|---:|---|
| resnet | CUDA | 90.0 (8) | 70.0 (16) | 0.78 | 1.00 | - (16) | {FELL}; x |
| resnet | TensorRT FP16 | 80.0 (8) | 60.0 (16) | 0.75 | 1.00 | - (16) | {FELL} |
| resnet | CPU | 95.0 (8) | - (-) | - | - | - (-) | {FELL} |

## Measurements

| model | provider | measure | level | rows/s | avg batch | p50 ms | p99 ms | note |
|---|---|---|---|---:|---:|---:|---:|---|
| resnet | CUDA | raw onnxruntime | batch 8 | 90.0 | - | - | - | {FELL} |
| resnet | TensorRT FP16 | raw onnxruntime | batch 8 | 80.0 | - | - | - | {FELL} |
| resnet | CUDA | served | 16 in flight | 70.0 | - | - | - | x; the provider did not start: CPU figures |
| resnet | TensorRT FP16 | served | 16 in flight | 60.0 | - | - | - \
| the provider did not start: CPU figures |
| resnet | CPU | raw onnxruntime | batch 8 | 95.0 | - | - | - | {FELL} |
"""


def test_two_providers_that_did_not_start_markdown_is_exactly_the_expected_document() -> None:
    """Both GPU providers named (comma-joined) in title and banner; the CPU series is not one."""
    assert markdown(Report(False, [], fallback_rows())) == FALLBACK_MD


def test_the_cpu_series_falling_back_is_no_gpu_provider_that_did_not_start() -> None:
    """A CPU-provider row with the fallback note is not listed as a GPU provider that failed."""
    assert fell_back([Row("m", "CPU", RAW, 1, 1.0, note=FELL)]) == []
    assert fell_back(fallback_rows()) == ["CUDA", "TensorRT FP16"]


def test_write_to_a_nested_md_path_writes_it_and_the_json_beside_it(tmp_path: Path) -> None:
    """A .md target is the file itself (parents made); the JSON is <stem>.json with every key."""
    report = Report(True, ["CPU: test"], dry_rows(), ["warn"])
    md, js = write(report, tmp_path / "a" / "b" / "report.md")
    assert (md, js) == (tmp_path / "a" / "b" / "report.md", tmp_path / "a" / "b" / "report.json")
    assert md.read_text(encoding="utf-8") == markdown(report)
    expected = {
        "dry": True,
        "not_gpu": [],
        "context": ["CPU: test"],
        "rows": [json.loads(json.dumps(r.__dict__)) for r in dry_rows()],
        "summary": summary_rows(dry_rows()),
        "transport": transport_rows(dry_rows(), dry=True),
        "server_warnings": ["warn"],
    }
    assert js.read_text(encoding="utf-8") == json.dumps(expected, indent=1) + "\n"
    assert json.loads(js.read_text(encoding="utf-8"))["transport"][0]["provider"] == "CUDA"


def test_write_to_a_missing_nested_folder_makes_it_and_names_the_files(tmp_path: Path) -> None:
    """A folder target (not there yet, two levels deep) gets gpu_check.md and gpu_check.json."""
    md, js = write(Report(False, [], gpu_rows()), tmp_path / "x" / "y")
    assert (md.name, js.name, md.parent) == ("gpu_check.md", "gpu_check.json", tmp_path / "x" / "y")
    assert md.read_text(encoding="utf-8").startswith("# GPU check\n") and js.read_text().endswith("}\n")


def test_the_markdown_is_utf8_even_under_an_ascii_locale(tmp_path: Path) -> None:
    """A note with non-ASCII text is written as UTF-8 whatever the process's locale encoding."""
    code = (
        "import sys; from pathlib import Path; from loadtest.gpu_report import Report, Row, RAW, write; "
        "note = '\\u00b5s \\u2014 ok'; "
        "write(Report(False, [], [Row('m', 'CUDA', RAW, 1, 1.0, note=note)]), Path(sys.argv[1]))"
    )
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    env.pop("PYTHONIOENCODING", None)
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "| \u00b5s \u2014 ok |" in (tmp_path / "gpu_check.md").read_text(encoding="utf-8")
