"""Large tensors, one run: served rate over the wire, over system shared memory, and raw onnxruntime
at the batch sizes the server actually ran.

    .venv/bin/python -m loadtest.shm_table --models resnet_u8,resnet --concurrency 8,16
    .venv/bin/python -m loadtest.shm_table --models resnet --concurrency 16 --ab-grpc-args \\
        grpc.http2.lookahead_bytes=4194304 --rounds 2

Starts `sluiceway serve --allow-client-shm` (demo models) and, for each model and concurrency, runs
perf_analyzer (windows of `--requests` answers) over the wire, then with `--shared-memory system`.
Around each run it reads the model's ModelStatistics (the batch sizes executed during that run) and
the server's CPU time; raw onnxruntime is then timed at exactly those batch sizes (default session
options, as the server's) and weighted as the server ran them. Rates swing with the load of a
shared machine; CPU per inference (server) against CPU per row (raw onnxruntime) much less: both
are reported. With `--ab-grpc-args`, wire runs alternate between a server with gRPC's defaults and
one with those channel arguments. Every perf_analyzer run is bounded by its windows and a timeout.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from loadtest import proc
from loadtest.model_statistics import batches_run
from loadtest.ort_ceiling import feeds
from loadtest.server import DEFAULT_CACHE_DIR, SpawnedServer

REPO_ROOT = Path(__file__).resolve().parents[1]
PERF_ANALYZER = REPO_ROOT.parent / "shared" / "tools" / "perf_analyzer"


def perf_analyzer(address: str, model: str, concurrency: int, shm: bool, requests: int) -> float:
    """perf_analyzer's infer/s for one run (windows of `requests` answers: a loaded machine still
    completes them, where a time window can end with too few)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.csv"
        command = [
            str(PERF_ANALYZER), "-m", model, "-u", address, "-i", "grpc",
            "--concurrency-range", str(concurrency), "--measurement-mode", "count_windows",
            "--measurement-request-count", str(requests), "--max-trials", "3",
            "--stability-percentage", "999", "-f", str(report),
        ]  # fmt: skip
        if shm:
            command += ["--shared-memory", "system", "--output-shared-memory-size", str(64 * 1024)]
        run = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if run.returncode != 0 or not report.exists():
            raise RuntimeError(f"perf_analyzer failed: {(run.stdout + run.stderr)[-2000:]}")
        (row,) = list(csv.DictReader(report.open()))
        return float(row["Inferences/Second"])


def measured(server: SpawnedServer, model: str, level: int, shm: bool, requests: int) -> Served:
    assert server.process is not None
    before, cpu = batches_run(server.address, model), proc.cpu_s(server.process.pid)
    rate = perf_analyzer(server.address, model, level, shm, requests)
    cpu = proc.cpu_s(server.process.pid) - cpu
    ran = batches_run(server.address, model)
    ran.subtract(before)
    rows = sum(size * count for size, count in ran.items())
    return Served(rate, +ran, cpu * 1e3 / rows)


@dataclass(frozen=True)
class Served:
    rate: float  # perf_analyzer's infer/s
    ran: Counter[int]  # batches the server ran meanwhile, by size
    cpu_ms: float  # server CPU per inference (all its threads): robust to a shared machine's load


def raw(session: ort.InferenceSession, ran: Counter[int], seconds: float) -> tuple[float, float]:
    """(rows/s, CPU ms per row) of raw onnxruntime running the same batches, timed right after the
    served run it is compared with (the shared machine's load drifts)."""
    rows = wall = cpu = 0.0
    for size, count in ran.most_common(3):  # the rest are a few stragglers
        inputs = feeds(session, size, np.random.default_rng(size))
        session.run(None, inputs)  # warm-up
        runs, start, start_cpu = 0, time.perf_counter(), time.process_time()
        while runs < 3 or time.perf_counter() - start < seconds:
            session.run(None, inputs)
            runs += 1
        rows += size * count
        wall += count * (time.perf_counter() - start) / runs
        cpu += count * (time.process_time() - start_cpu) / runs
    return (rows / wall, cpu * 1e3 / rows) if rows else (0.0, 0.0)


def describe(ran: Counter[int]) -> str:
    runs = sum(ran.values())
    mean = sum(size * count for size, count in ran.items()) / runs if runs else 0.0
    top = ", ".join(f"{size}x{count}" for size, count in ran.most_common(3))
    return f"{mean:.1f} ({top})"


def demo_model_file(cache_dir: Path, model: str) -> Path:
    env = {**os.environ, "SLUICEWAY_CACHE_DIR": str(cache_dir)}
    out = subprocess.run(
        [sys.executable, "-m", "server", "build-demo"], env=env, check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip().splitlines()[-1]) / model / "1" / "model.onnx"


def table(args: argparse.Namespace, models: list[str], levels: list[int]) -> None:
    print(
        "| model | in flight | wire infer/s | shm infer/s | batch sizes run, wire; shm (mean (size x runs)) "
        "| raw ORT rows/s at those batches, wire; shm | wire / raw | shm / raw "
        "| server CPU ms per inference, wire; shm | raw ORT CPU ms per row "
        "| raw CPU / served CPU, wire; shm |"
    )
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    with SpawnedServer(args.cache_dir, ["--allow-client-shm", *args.server_args]) as server:
        for model in models:
            session = ort.InferenceSession(
                str(demo_model_file(args.cache_dir, model)), providers=["CPUExecutionProvider"]
            )
            for level in levels:
                wire = measured(server, model, level, False, args.requests)
                raw_wire, raw_wire_cpu = raw(session, wire.ran, args.ort_seconds)
                shm = measured(server, model, level, True, args.requests)
                raw_shm, raw_shm_cpu = raw(session, shm.ran, args.ort_seconds)
                cells = [
                    model, str(level), f"{wire.rate:.0f}", f"{shm.rate:.0f}",
                    f"{describe(wire.ran)}; {describe(shm.ran)}", f"{raw_wire:.0f}; {raw_shm:.0f}",
                    f"{wire.rate / raw_wire:.2f}", f"{shm.rate / raw_shm:.2f}",
                    f"{wire.cpu_ms:.1f}; {shm.cpu_ms:.1f}", f"{raw_wire_cpu:.1f}; {raw_shm_cpu:.1f}",
                    f"{raw_wire_cpu / wire.cpu_ms:.2f}; {raw_shm_cpu / shm.cpu_ms:.2f}",
                ]  # fmt: skip
                print("| " + " | ".join(cells) + " |")


def ab(args: argparse.Namespace, models: list[str], levels: list[int]) -> None:
    print(f"A: gRPC defaults; B: --grpc-server-args {args.ab_grpc_args}")
    head = "| model | in flight | round | A infer/s | B infer/s | B / A"
    print(f"{head} | A server CPU ms/inference | B | B / A |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for model in models:
        for level in levels:
            for round_ in range(1, args.rounds + 1):
                runs = []
                for extra in ([], ["--grpc-server-args", args.ab_grpc_args]):
                    with SpawnedServer(args.cache_dir, [*args.server_args, *extra]) as server:
                        with contextlib.suppress(RuntimeError):  # warm-up; too few answers is fine
                            perf_analyzer(server.address, model, level, False, 2 * level)
                        runs.append(measured(server, model, level, False, args.requests))
                a, b = runs
                cells = [
                    model, str(level), str(round_), f"{a.rate:.0f}", f"{b.rate:.0f}",
                    f"{b.rate / a.rate:.2f}", f"{a.cpu_ms:.1f}", f"{b.cpu_ms:.1f}",
                    f"{b.cpu_ms / a.cpu_ms:.2f}",
                ]  # fmt: skip
                print("| " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet_u8,resnet")
    parser.add_argument("--concurrency", default="8,16")
    parser.add_argument("--requests", type=int, default=80, help="answers per perf_analyzer window")
    parser.add_argument("--ort-seconds", type=float, default=2.0, help="raw onnxruntime time per batch size")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument("--server-args", default="", help="extra `sluiceway serve` flags, space-separated")
    parser.add_argument("--ab-grpc-args", default="", help="A/B the wire against these grpc channel args")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    args.server_args = args.server_args.split()
    models = args.models.split(",")
    levels = [int(c) for c in args.concurrency.split(",")]
    load = proc.load_average()
    print(f"load average before: {load}; {os.cpu_count()} CPUs")
    if args.ab_grpc_args:
        ab(args, models, levels)
    else:
        table(args, models, levels)
    load = proc.load_average()
    print(f"load average after: {load}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
