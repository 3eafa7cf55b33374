"""The GPU check's dry run (loadtest/gpu_check.py --dry): the path a GPU run takes (repository copies
with KIND_GPU groups and the TensorRT accelerator, accepted by a real server; raw onnxruntime;
sluiceway-loadtest against that server) on the CPU provider, about 20 s here. The table must hold
every row of the plan with numbers, and say on every line that it is a dry run, not GPU figures.
scripts/gpu_check.sh itself: its syntax, and its refusal to run without a GPU unless --dry."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.gpu_check import MODELS, PROVIDERS, mentions, plan_for
from loadtest.gpu_report import RAW, SERVED
from tests.support.once import GPU_DRY_RUN, once_per_command

REPO = Path(__file__).resolve().parents[2]
NUMBER = re.compile(r"^-?[\d,]+\.\d+$")
# The dry run (~33 s of one test worker on a slow day) once per test command, on the newest of its
# Pythons: it exercises the script's path, not the Python (the GPU image runs 3.12).
ONCE = once_per_command(GPU_DRY_RUN)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, object]]:
    out = tmp_path_factory.mktemp("gpu_check") / "table.md"
    work = out.parent / "work"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtest.gpu_check",
            str(out),
            "--dry",
            "--budget-s",
            "100",
            "--work-dir",
            str(work),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out.read_text(), json.loads(out.with_suffix(".json").read_text())


@ONCE
def test_the_dry_table_has_every_row_with_numbers(dry_run: tuple[str, dict[str, object]]) -> None:
    text, _ = dry_run
    plan = plan_for(dry=True)
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| ")]
    measured = {(c[0].strip(), c[1].strip(), c[2].strip(), c[3].strip()): c for c in rows if len(c) == 9}
    for provider in PROVIDERS:
        label = plan.label(provider)
        for model in MODELS:
            levels = [(RAW, f"batch {b}") for b in plan.raw_batches]
            levels += [(SERVED, f"{n} in flight") for n in plan.in_flight]
            for measure, level in levels:
                cells = measured.get((model, label, measure, level))
                assert cells is not None, f"no row for {model} {label} {measure} {level}"
                figures = [cell.strip() for cell in cells[4:8]]  # rows/s, avg batch, p50, p99
                assert all(NUMBER.match(f) for f in figures), f"{model} {label} {level}: {figures}"
    summary = [c for c in rows if len(c) == 8 and c[0].strip() in MODELS]
    assert len(summary) == len(MODELS) * len(PROVIDERS)
    assert all(NUMBER.match(c[4].strip()) and NUMBER.match(c[5].strip()) for c in summary)


@ONCE
def test_dry_figures_are_never_labelled_gpu_figures(dry_run: tuple[str, dict[str, object]]) -> None:
    text, data = dry_run
    assert text.startswith("# GPU check: CPU DRY RUN (not GPU figures)")
    assert "**CPU DRY RUN: not GPU figures.**" in text
    table_rows = [
        line for line in text.splitlines() if line.startswith("| ") and line.split("|")[1].strip() in MODELS
    ]
    assert all("CPU (dry run of the " in line for line in table_rows)
    plan = plan_for(dry=True)
    per_model = 1 + len(plan.raw_batches) + len(plan.in_flight)  # summary + raw + served
    assert len(table_rows) == len(MODELS) * len(PROVIDERS) * per_model
    assert data["dry"] is True
    # The server was asked for the GPU and said, per model, what it ran on instead.
    warnings = text.split("## Server warnings", 1)[-1].splitlines()
    assert all(any(mentions(line, m) for line in warnings) for m in MODELS), warnings


def test_the_script_refuses_a_machine_without_a_gpu(tmp_path: Path) -> None:
    assert subprocess.run(["bash", "-n", "scripts/gpu_check.sh"], cwd=REPO, check=False).returncode == 0
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi: the no-GPU refusal cannot be seen here")
    done = subprocess.run(
        ["bash", "scripts/gpu_check.sh", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1 and "no NVIDIA GPU here" in done.stderr and "--dry" in done.stderr
    assert not (tmp_path / "gpu_check.md").exists()


def test_the_script_refuses_providers_it_does_not_know(tmp_path: Path) -> None:
    """A tester's `cpu,bogus` ran, and `'cuda, cpu'` measured CUDA alone, both without a word."""
    env = {**os.environ, "GPU_CHECK_PROVIDERS": "cuda,bogus"}
    done = subprocess.run(
        ["bash", "scripts/gpu_check.sh", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "GPU_CHECK_PROVIDERS names 'bogus'" in done.stderr
