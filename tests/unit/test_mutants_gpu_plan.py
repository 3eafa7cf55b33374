"""The GPU check's plan (loadtest/gpu_plan.py): the exact numbers of a dry and a real run, the budget, the
TensorRT check and the machine context lines, all with fakes (no GPU, no nvidia-smi, no clock)."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import sys
import types
from typing import Any

import pytest

from loadtest import gpu_plan
from loadtest.gpu_plan import (
    PROVIDERS,
    TENSORRT_LIBRARY,
    Budget,
    Plan,
    first_line,
    plan_for,
    tensorrt_missing,
)

CUDA = PROVIDERS[0]


def test_dry_plan_is_exactly_the_small_cpu_plan() -> None:
    """A dry run: two batch sizes and two levels, short windows, one process and instance, one run."""
    assert plan_for(True) == Plan(True, (1, 2), (1, 2), 0.05, 0.6, 0.1, 1, 1, 1, 1)
    plan = plan_for(True, instances=4, processes=8, server_workers=3)
    assert plan == Plan(True, (1, 2), (1, 2), 0.05, 0.6, 0.1, 1, 1, min_runs=1, server_workers=3)
    assert plan.max_rows == 2 and plan.connections == 2


def test_real_plan_is_exactly_the_gpu_plan() -> None:
    """A GPU run: four batch sizes, three levels, the given processes, instances and workers."""
    assert plan_for(False) == Plan(False, (1, 8, 32, 64), (1, 16, 64), 1.5, 3.0, 1.0, 4, 1, 3, 1)
    plan = plan_for(False, instances=2, processes=8, server_workers=4)
    assert plan == Plan(False, (1, 8, 32, 64), (1, 16, 64), 1.5, 3.0, 1.0, 8, 2, 3, 4)
    assert plan.dry is False and plan.max_rows == 64 and plan.connections == 8


def test_connections_round_up_per_process() -> None:
    """64 users over 3 processes against several workers: 22 connections each (rounded up)."""
    assert plan_for(False, processes=3, server_workers=2).connections == 22
    assert plan_for(False, processes=3, server_workers=1).connections == 1


def test_label_names_the_dry_run_only_when_dry() -> None:
    """A dry run's rows say CPU; a real run's keep the provider's label."""
    assert plan_for(True).label(CUDA) == "CPU (dry run of the CUDA config)"
    assert plan_for(False).label(CUDA) == "CUDA"


def test_budget_left_counts_down_on_the_monotonic_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Budget(10) at t=100 has 6 s left at t=104 and is 1 s over at t=111."""
    now = [100.0]
    monkeypatch.setattr(gpu_plan.time, "monotonic", lambda: now[0])
    budget = Budget(10)
    assert budget.deadline == 110.0
    now[0] = 104.0
    assert budget.left() == 6.0
    now[0] = 111.0
    assert budget.left() == -1.0


def test_first_line_is_the_stripped_first_line_or_the_type() -> None:
    """The message's first line, cut at 200 characters; an empty message gives the type's name."""
    assert first_line(OSError("  boom\nsecond line ")) == "boom"
    assert first_line(OSError("")) == "OSError"
    assert first_line(ValueError("x" * 300)) == "x" * 200


def test_tensorrt_missing_loads_the_library_and_names_the_error() -> None:
    """The fake loader is asked for libnvinfer; its OSError's first line is in the reason."""
    asked: list[str] = []

    def fails(name: str) -> object:
        asked.append(name)
        raise OSError(f"{name}: cannot open shared object file\nmore")

    assert tensorrt_missing(fails) == (
        "TensorRT's libnvinfer.so.10 does not load (libnvinfer.so.10: cannot open shared object file)"
    )
    assert asked == [TENSORRT_LIBRARY]


def test_tensorrt_present_when_the_library_loads() -> None:
    """A loader that succeeds: nothing missing, and it was asked for libnvinfer."""
    asked: list[str] = []
    assert tensorrt_missing(asked.append) is None
    assert asked == ["libnvinfer.so.10"]


class Machine:
    """Fakes for what machine_context reads: nvidia-smi, package versions, onnxruntime, CPUs, clock."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, smi: str | None, versions: dict[str, str]) -> None:
        self.calls: list[tuple[Any, dict[str, Any]]] = []
        self.stdout, self.stderr = " H200, 570.1, 143771 MiB \n", ""
        self.versions = versions
        monkeypatch.setattr(gpu_plan.shutil, "which", lambda name: smi if name == "nvidia-smi" else None)
        monkeypatch.setattr(gpu_plan.subprocess, "run", self.run)
        monkeypatch.setattr(gpu_plan.importlib.metadata, "version", self.version)
        ort = types.SimpleNamespace(get_available_providers=lambda: ["CUDAExecutionProvider"])
        monkeypatch.setitem(sys.modules, "onnxruntime", ort)
        monkeypatch.setattr(gpu_plan.os, "cpu_count", lambda: 7)
        monkeypatch.setattr(gpu_plan.time, "strftime", lambda fmt: f"<{fmt}>")

    def run(self, *args: Any, **kwargs: Any) -> types.SimpleNamespace:
        self.calls.append((args, kwargs))
        return types.SimpleNamespace(stdout=self.stdout, stderr=self.stderr)

    def version(self, name: str) -> str:
        if name not in self.versions:
            raise importlib.metadata.PackageNotFoundError(name)
        return self.versions[name]


PYTHON = f"Python {sys.version.split()[0]}; 7 CPUs; <%Y-%m-%d %H:%M %Z>"
QUERY = "--query-gpu=name,driver_version,memory.total"
BOTH = {"onnxruntime-gpu": "1.31.1", "onnxruntime": "1.20.0"}


def test_machine_context_of_a_gpu_run_with_several_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every line of a real run against 4 workers with server flags, word for word."""
    machine = Machine(monkeypatch, "/usr/bin/nvidia-smi", BOTH)
    plan = dataclasses.replace(
        plan_for(False, instances=2, processes=8, server_workers=4), server_args=("--shared-sessions", "gpu")
    )
    assert gpu_plan.machine_context(plan, "3 passed") == [
        "GPU: H200, 570.1, 143771 MiB",
        "onnxruntime: onnxruntime-gpu 1.31.1, onnxruntime 1.20.0; providers ['CUDAExecutionProvider']",
        PYTHON,
        "repository copy: the demo models, max_batch_size 64, one KIND_GPU group of 2 on GPU 0 (CPU rows: "
        "KIND_CPU), model_warmup of 1 and 64 rows (twice each); TensorRT: FP16, engine cache, one profile "
        "1..64 rows",
        "raw: InferenceSession.run on host arrays, 1.5 s per batch size after 2 warm-up runs; served: "
        "sluiceway-loadtest closed loop, 1 row a request, 8 client processes, 1.0 s warm-up + 3.0 s per "
        "level; avg batch from ModelStatistics; each user on a connection of its own (`--connections 8`), "
        "and so is each of perf_analyzer's requests in flight (TRITON_CLIENT_GRPC_CHANNEL_MAX_SHARE_COUNT=1)",
        "server flags: --shared-sessions gpu",
        "server: `serve --workers 4`, each worker its own instances on GPU 0; no avg batch or shape changes "
        "for served rows (a statistics read reaches one worker, the reads before and after a point maybe "
        "two), except with --shared-sessions: then the session host's runs (the batches the GPU ran) and "
        "shape changes, alike on every worker",
        "GPU tests (pytest -m gpu): 3 passed",
    ]
    assert machine.calls == [
        (
            (
                [
                    "/usr/bin/nvidia-smi",
                    "--query-gpu=name,driver_version,memory.total",
                    "--format=csv,noheader",
                ],
            ),
            {"capture_output": True, "text": True, "timeout": 30, "check": False},
        )
    ]


def test_machine_context_of_a_dry_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """A dry run asks no nvidia-smi even where there is one, and has no worker or flag lines."""
    machine = Machine(monkeypatch, "/usr/bin/nvidia-smi", {"onnxruntime": "1.20.0"})
    assert gpu_plan.machine_context(plan_for(True), None) == [
        "onnxruntime: onnxruntime 1.20.0; providers ['CUDAExecutionProvider']",
        PYTHON,
        "repository copy: the demo models, max_batch_size 2, one KIND_GPU group of 1 on GPU 0 (CPU rows: "
        "KIND_CPU), model_warmup of 1 and 2 rows (twice each); TensorRT: FP16, engine cache, one profile "
        "1..2 rows",
        "raw: InferenceSession.run on host arrays, 0.05 s per batch size after 2 warm-up runs; served: "
        "sluiceway-loadtest closed loop, 1 row a request, 1 client processes, 0.1 s warm-up + 0.6 s per "
        "level; avg batch from ModelStatistics",
        "GPU tests (pytest -m gpu): not run",
    ]
    assert machine.calls == []


def test_machine_context_of_a_dry_run_without_nvidia_smi(monkeypatch: pytest.MonkeyPatch) -> None:
    """No nvidia-smi on a dry run: still no GPU line; one worker (the default) adds no worker line."""
    Machine(monkeypatch, None, {})
    items = gpu_plan.machine_context(plan_for(True, server_workers=1), "")
    assert items[0] == "onnxruntime: none; providers ['CUDAExecutionProvider']"
    assert len(items) == 5 and items[-1] == "GPU tests (pytest -m gpu): not run"


def test_machine_context_without_nvidia_smi_on_a_gpu_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """A real run without nvidia-smi says so first, and runs nothing."""
    machine = Machine(monkeypatch, None, BOTH)
    items = gpu_plan.machine_context(plan_for(False), "1 failed")
    assert items[0] == "GPU: nvidia-smi not found" and machine.calls == []
    assert items[-1] == "GPU tests (pytest -m gpu): 1 failed" and len(items) == 6
    assert items[4].endswith("s per level; avg batch from ModelStatistics")


def test_machine_context_gpu_line_falls_back_to_stderr_then_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    """nvidia-smi's stdout, else its stderr, else 'nvidia-smi said nothing'."""
    machine = Machine(monkeypatch, "smi", BOTH)
    machine.stdout, machine.stderr = "  \n", " no devices found \n"
    assert gpu_plan.machine_context(plan_for(False), None)[0] == "GPU: no devices found"
    machine.stderr = ""
    assert gpu_plan.machine_context(plan_for(False), None)[0] == "GPU: nvidia-smi said nothing"


def test_machine_context_two_workers_add_the_worker_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers (the smallest several): the connections note and the worker line, no flag line."""
    Machine(monkeypatch, "smi", BOTH)
    items = gpu_plan.machine_context(plan_for(False, processes=4, server_workers=2), None)
    assert len(items) == 7
    assert "(`--connections 16`)" in items[4]
    assert items[5].startswith("server: `serve --workers 2`, each worker its own instances on GPU 0; no avg")
