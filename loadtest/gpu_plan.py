"""What the GPU check measures (loadtest/gpu_check.py): the providers, the plan of sizes, levels and
durations (a GPU's, or a dry run's on the CPU), the run's time budget, and the machine it ran on as
the report names it."""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Provider:
    key: str  # "cuda", "tensorrt" or "cpu"
    label: str


# CPU last: the same models served on this machine's CPU, for the GPU's gain, cut first if time is short.
PROVIDERS = (Provider("cuda", "CUDA"), Provider("tensorrt", "TensorRT FP16"), Provider("cpu", "CPU"))


@dataclass(frozen=True)
class Plan:
    dry: bool
    raw_batches: tuple[int, ...]
    in_flight: tuple[int, ...]
    raw_s: float
    served_s: float
    warmup_s: float
    processes: int
    instances: int
    min_runs: int = 3
    server_workers: int = 1  # `serve --workers`: server processes, each with its own instances
    server_args: tuple[str, ...] = ()  # more `serve` flags, e.g. --shared-sessions gpu
    pa_models: tuple[str, ...] = ("resnet", "resnet_u8")  # perf_analyzer's (the large-input models)

    @property
    def max_rows(self) -> int:
        return max(self.raw_batches)

    @property
    def connections(self) -> int:
        """Connections each client process opens for the served points: against several server
        processes one a closed-loop user (the kernel spreads connections over the workers, not
        requests: one a process had left workers idle), else one."""
        if self.server_workers <= 1:
            return 1
        return -(-max(self.in_flight) // max(1, self.processes))

    def label(self, provider: Provider) -> str:
        return f"CPU (dry run of the {provider.label} config)" if self.dry else provider.label


def plan_for(dry: bool, instances: int = 1, processes: int = 4, server_workers: int = 1) -> Plan:
    """`processes`: the load generator's client processes on a GPU run (a dry run uses one)."""
    if dry:  # the GPU levels on a 2-core CPU would take minutes for the resnets
        return Plan(True, (1, 2), (1, 2), 0.05, 0.6, 0.1, 1, 1, min_runs=1, server_workers=server_workers)
    # 3 models x 2 providers x (4 raw + 3 served points) with TensorRT's engine builds: about 4 minutes.
    return Plan(False, (1, 8, 32, 64), (1, 16, 64), 1.5, 3.0, 1.0, processes, instances, 3, server_workers)


TENSORRT_LIBRARY = "libnvinfer.so.10"  # what onnxruntime-gpu 1.31.1's TensorRT provider links


def first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def tensorrt_missing(load: Callable[[str], object] = ctypes.CDLL) -> str | None:
    """Why the TensorRT provider cannot start here (its library does not load), or None. Without
    it onnxruntime falls back to CUDA, and the TensorRT rows would only measure CUDA again."""
    try:
        load(TENSORRT_LIBRARY)
    except OSError as err:
        return f"TensorRT's {TENSORRT_LIBRARY} does not load ({first_line(err)})"
    return None


class Budget:
    """Seconds left of the run; every phase asks before it starts."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


def machine_context(plan: Plan, tests_summary: str | None) -> list[str]:
    items: list[str] = []
    smi = shutil.which("nvidia-smi")
    if smi and not plan.dry:
        query = [smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
        done = subprocess.run(query, capture_output=True, text=True, timeout=30, check=False)
        items.append(f"GPU: {done.stdout.strip() or done.stderr.strip() or 'nvidia-smi said nothing'}")
    elif not plan.dry:
        items.append("GPU: nvidia-smi not found")
    runtimes = []
    for name in ("onnxruntime-gpu", "onnxruntime"):
        try:
            runtimes.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    import onnxruntime as ort

    items.append(f"onnxruntime: {', '.join(runtimes) or 'none'}; providers {ort.get_available_providers()}")
    items.append(
        f"Python {sys.version.split()[0]}; {os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d %H:%M %Z')}"
    )
    items.append(
        f"repository copy: the demo models, max_batch_size {plan.max_rows}, one KIND_GPU group of "
        f"{plan.instances} on GPU 0 (CPU rows: KIND_CPU), model_warmup of 1 and {plan.max_rows} rows "
        f"(twice each); "
        f"TensorRT: FP16, engine cache, one profile 1..{plan.max_rows} rows"
    )
    items.append(
        f"raw: InferenceSession.run on host arrays, {plan.raw_s} s per batch size after 2 warm-up runs; "
        f"served: sluiceway-loadtest closed loop, 1 row a request, {plan.processes} client processes, "
        f"{plan.warmup_s} s warm-up + {plan.served_s} s per level; avg batch from ModelStatistics"
        + (
            f"; each user on a connection of its own (`--connections {plan.connections}`), and so is "
            "each of perf_analyzer's requests in flight (TRITON_CLIENT_GRPC_CHANNEL_MAX_SHARE_COUNT=1)"
            if plan.server_workers > 1
            else ""
        )
    )
    if plan.server_args:
        items.append(f"server flags: {' '.join(plan.server_args)}")
    if plan.server_workers > 1:
        items.append(
            f"server: `serve --workers {plan.server_workers}`, each worker its own instances on GPU 0; no "
            "avg batch or shape changes for served rows (a statistics read reaches one worker, "
            "the reads before and after a point maybe two), except with --shared-sessions: then "
            "the session host's runs (the batches the GPU ran) and shape changes, alike on every worker"
        )
    items.append(f"GPU tests (pytest -m gpu): {tests_summary or 'not run'}")
    return items
