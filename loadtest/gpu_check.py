"""Raw onnxruntime against the served rate on a GPU, per demo model and provider, in one bounded run.

    python -m loadtest.gpu_check [PATH] [--dry] [--budget-s S] [--tests-summary FILE] [--providers P]
        [--instances N] [--client-processes N] [--server-workers N] [--perf-analyzer TOOL]

For each provider (CUDA; TensorRT FP16; the CPU, for the GPU's gain on the same machine) it writes
a copy of the demo repository whose configs ask for it (KIND_GPU group on GPU 0, or KIND_CPU,
max_batch_size set to the largest raw batch, and for TensorRT the accelerator with an engine cache
and one optimisation profile from 1 row to that batch), then
  - raw: InferenceSession.run on host arrays (copies in and out included) at each batch size;
  - served: `sluiceway serve` on that copy (127.0.0.1, a free port), driven by sluiceway-loadtest's
    closed loop at each level in flight (one row a request), with the server's average batch
    (ModelStatistics) and client-side p50/p99;
  - with --perf-analyzer, for the GPU providers: perf_analyzer against the same server for resnet
    and resnet_u8, over the wire and with system shared memory (loadtest/gpu_perf_analyzer.py).
Every point is time-boxed and the whole run keeps within `--budget-s`: what no longer fits is
written as skipped, never left out. `--dry` (or GPU_CHECK_DRY=1) runs the same path on the CPU
provider with tiny durations and levels, and labels the table as a dry run. A GPU provider that
did not start (its rows ran on the CPU provider) is named in the table's title and the JSON, and
the run exits 1.
PATH: a .md file or a folder (default: $OUT, else out/gpu_check); the JSON is written beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.gpu_perf_analyzer import perf_analyzer_context, perf_analyzer_rows
from loadtest.gpu_perf_analyzer import skipped_rows as perf_analyzer_skipped
from loadtest.gpu_plan import (
    PROVIDERS,
    Budget,
    Plan,
    Provider,
    first_line,
    machine_context,
    plan_for,
    tensorrt_missing,
)
from loadtest.gpu_report import OUT_OF_TIME, RAW, SERVED, Report, Row, write
from loadtest.gpu_repository import MODELS, load_config, tensorrt_parameters, write_copy
from loadtest.server import DEFAULT_CACHE_DIR, SpawnedServer
from protos import model_config_pb2 as mc

MAX_RUNS = 200_000  # per raw point, whatever the time box says
SERVER_START_S = 240.0  # TensorRT builds engines at load when the raw runs' cache does not fit
# Kept tail lines with these are shown; lines with COUNTED are counted even beyond the tail.
COUNTED = ("WARNING", "[W:onnxruntime", "[E:onnxruntime")
NOT_SERVED = "server did not start"  # the served points' note when the server never became ready
SHARED_RUNS = "shared session ran"  # the session host's count at its stop (session_host.py)
PADDED = "padded batches"  # a CUDA instance's load line (server/backends/batch_padding.py)
FALLBACK_WORDS = ("not available", "fell back", "falling back", "running on", "instead")


def build_demo(cache_dir: Path) -> Path:
    """The demo repository, built by the server's own builder (loadtest never imports server)."""
    done = subprocess.run(
        [sys.executable, "-m", "server", "build-demo"],
        env={**os.environ, "SLUICEWAY_CACHE_DIR": str(cache_dir)},
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    return Path(done.stdout.strip().splitlines()[-1])


def raw_providers(provider: Provider, config: mc.ModelConfig, plan: Plan, cache: Path) -> list[Any]:
    cuda = ("CUDAExecutionProvider", {"device_id": "0"})
    if provider.key == "cpu":
        return [("CPUExecutionProvider", {})]
    if provider.key == "cuda":
        return [cuda, ("CPUExecutionProvider", {})]
    params = tensorrt_parameters(config, plan.max_rows, cache)
    params.pop("precision_mode")
    trt = ("TensorrtExecutionProvider", {"device_id": "0", "trt_fp16_enable": "1", **params})
    return [trt, cuda, ("CPUExecutionProvider", {})]


def time_runs(session: Any, inputs: dict[str, np.ndarray], plan: Plan) -> tuple[float, float, float]:
    """(rows/s, p50 ms, p99 ms) of back-to-back runs for `plan.raw_s` seconds (at least min_runs)."""
    for _ in range(2):  # warm-up: first-run allocations (and an engine build without a cache)
        session.run(None, inputs)
    times: list[float] = []
    start = time.perf_counter()
    while (len(times) < plan.min_runs or time.perf_counter() - start < plan.raw_s) and len(times) < MAX_RUNS:
        began = time.perf_counter()
        session.run(None, inputs)
        times.append(time.perf_counter() - began)
    rows = next(iter(inputs.values())).shape[0]
    p50, p99 = np.percentile(np.array(times) * 1e3, [50, 99])
    return rows * len(times) / (time.perf_counter() - start), float(p50), float(p99)


def skipped(label: str, plan: Plan, note: str, raw: bool = True) -> list[Row]:
    """Rows for points not measured, each saying why: every model's raw batches (unless not `raw`)
    and served levels."""
    rows = [Row(m, label, RAW, b, note=note) for m in MODELS for b in plan.raw_batches] if raw else []
    return rows + [Row(m, label, SERVED, n, note=note) for m in MODELS for n in plan.in_flight]


def raw_rows(model_dir: Path, provider: Provider, plan: Plan, cache: Path, budget: Budget) -> list[Row]:
    import onnxruntime as ort

    from loadtest.ort_ceiling import feeds

    label, model = plan.label(provider), model_dir.name
    config = load_config(model_dir / "config.pbtxt")
    wanted = raw_providers(provider, config, plan, cache)
    available = set(ort.get_available_providers())
    usable = [(name, opts) for name, opts in wanted if name in available]
    try:
        session = ort.InferenceSession(
            str(model_dir / "1" / "model.onnx"),
            providers=[name for name, _ in usable],
            provider_options=[opts for _, opts in usable],
        )
    except Exception as err:  # a provider that cannot start: every point says why
        return [Row(model, label, RAW, b, note=f"no session: {first_line(err)}") for b in plan.raw_batches]
    active, first = session.get_providers()[0], wanted[0][0]
    why = "not in this onnxruntime build" if first not in available else "did not start"
    note = "" if active == first else f"ran on {active} ({first}: {why})"
    rows: list[Row] = []
    rng = np.random.default_rng(0)
    for batch in plan.raw_batches:
        if budget.left() < plan.raw_s + 5.0:
            rows.append(Row(model, label, RAW, batch, note=OUT_OF_TIME))
            continue
        try:
            rate, p50, p99 = time_runs(session, feeds(session, batch, rng), plan)
        except Exception as err:  # out of device memory, a provider failing at run time
            rows.append(Row(model, label, RAW, batch, note=f"run failed: {first_line(err)}"))
            continue
        rows.append(Row(model, label, RAW, batch, rate, float(batch), p50, p99, note))
    del session
    gc.collect()  # the device memory goes back before the server starts
    return rows


def mentions(line: str, model: str) -> bool:
    """Whether a server log line is about `model` (its config path, an instance group's default name
    `<model>_<index>`, or its name). Not another model whose name it begins (resnet in resnet_u8's
    `'resnet_u8_0'`: a prefix match had marked resnet's rows warned for resnet_u8's warning)."""
    named = re.search(rf"'{re.escape(model)}(_\d+)?'", line) is not None
    return named or f"/{model}/" in line or f"model {model}:" in line


def served_rows(
    address: str,
    provider: Provider,
    plan: Plan,
    budget: Budget,
    warnings: list[str],
    metrics_url: str | None = None,
) -> list[Row]:
    from loadtest.cli import build_parser, run

    label = plan.label(provider)
    per_point = 0.5 + plan.warmup_s + plan.served_s
    needed = per_point * len(MODELS) * len(plan.in_flight) + 10.0
    if budget.left() < needed:
        return skipped(label, plan, OUT_OF_TIME, raw=False)
    compare = ",".join(f"{m}={address}/{m}" for m in MODELS)
    args = build_parser().parse_args(
        ["--compare", compare, "--model", MODELS[0], "--concurrency", ",".join(map(str, plan.in_flight)),
         "--duration-s", str(plan.served_s), "--warmup-s", str(plan.warmup_s), "--rounds", "1",
         "--processes", str(plan.processes), "--connections", str(plan.connections), "--seed", "1", "--quiet",
         *(["--server-metrics", metrics_url] if metrics_url else [])]
    )  # fmt: skip
    try:
        results = run(args)
    except Exception as err:  # workers that did not report, an unreachable model
        return skipped(label, plan, f"load run failed: {first_line(err)}", raw=False)
    rows: list[Row] = []
    one_process = plan.server_workers == 1  # else a before and an after read may reach two workers
    for entry in results["results"]:
        model, level = entry["target"], int(entry["step"]["level"])
        errors = sum(entry["errors"].values())
        latency = entry["latency_us"]
        warned = any(mentions(line, model) for line in warnings)
        metrics = entry["server"].get("metrics") or {}
        shared = bool(metrics.get("shared_runs"))  # the session host's counts: alike on every worker
        changes = metrics.get("padded_shape_changes") if one_process or shared else None
        batch = entry["server"]["avg_batch_size"] if one_process else None
        if shared:  # the batches the GPU ran, merged from the workers'
            batch = metrics.get("shared_rows", 0.0) / metrics["shared_runs"]
        note = "; ".join(
            text
            for text in (
                f"{errors} errors" if errors else "",
                "server warned: see Server warnings" if warned else "",
                "" if changes is None else f"{changes:.0f} padded shape changes",
            )
            if text
        )
        rows.append(
            Row(
                model, label, SERVED, level, entry["throughput_rps"], batch,
                None if latency["p50"] is None else latency["p50"] / 1e3,
                None if latency["p99"] is None else latency["p99"] / 1e3,
                note,
            )
        )  # fmt: skip
    order = {m: i for i, m in enumerate(MODELS)}
    return sorted(rows, key=lambda r: (order[r.model], r.level))


def check_provider(
    demo: Path,
    work: Path,
    provider: Provider,
    plan: Plan,
    budget: Budget,
    report: Report,
    perf_analyzer: Path | None = None,
) -> None:
    label = plan.label(provider)
    # The outside check on the GPU providers' servers only: the CPU series is there for the gain.
    tool = perf_analyzer if provider.key != "cpu" else None
    missing = None if plan.dry or provider.key != "tensorrt" else tensorrt_missing()
    if missing is not None:
        report.log.append(f"[{label}] not measured: {missing}")
        report.rows.extend(skipped(label, plan, f"skipped: {missing}"))
        report.rows.extend(perf_analyzer_skipped(label, plan, f"skipped: {missing}") if tool else [])
        return
    # The engine cache inside the server's cache directory: the only place besides the model's own
    # directory a config may point TensorRT at (server/models/tensorrt_paths.py).
    copy, cache = work / f"repository-{provider.key}", (work / "server-cache" / "tensorrt-shared").resolve()
    cache.mkdir(parents=True, exist_ok=True)  # kept: a rerun loads the engines instead of building them
    shutil.rmtree(copy, ignore_errors=True)
    write_copy(demo, copy, provider, plan, cache)
    for model in MODELS:
        report.rows.extend(raw_rows(copy / model, provider, plan, cache, budget))
    start_s = min(SERVER_START_S, budget.left() - 20.0)
    if start_s < 10.0:
        report.rows.extend(skipped(label, plan, OUT_OF_TIME, raw=False))
        report.rows.extend(perf_analyzer_skipped(label, plan, OUT_OF_TIME) if tool else [])
        return
    extra = ["--allow-client-shm"] if tool else []  # perf_analyzer's regions (every worker's under several)
    extra += ["--workers", str(plan.server_workers)] if plan.server_workers > 1 else []
    extra += plan.server_args
    server = SpawnedServer(work / "server-cache", ["--model-repository", str(copy), *extra], watch=COUNTED)
    began = time.monotonic()
    try:
        server.start(timeout_s=start_s)
    except Stopped:  # the time limit while it loads: its process goes with this one
        server.stop()
        raise
    except RuntimeError as err:
        tail = str(err).strip().splitlines()[-1:] or ["(no output)"]
        report.log.append(f"[{label}] server did not start: {tail[0]}")
        report.rows.extend(skipped(label, plan, NOT_SERVED, raw=False))
        report.rows.extend(perf_analyzer_skipped(label, plan, NOT_SERVED) if tool else [])
        return
    try:
        report.log.append(f"[{label}] server ready in {time.monotonic() - began:.1f} s (loads and warm-ups)")
        warnings = [line.rstrip() for line in server.tail if any(w in line for w in FALLBACK_WORDS)]
        report.log.extend(f"[{label}] {line}" for line in warnings[:20])
        padded = [line.rstrip() for line in server.tail if PADDED in line]
        report.log.extend(f"[{label}] {line}" for line in padded[: len(MODELS)])
        counts = ", ".join(f"{server.seen[text]} '{text}'" for text in COUNTED)
        report.log.append(f"[{label}] server output lines until ready: {counts}")
        report.rows.extend(served_rows(server.address, provider, plan, budget, warnings, server.metrics_url))
        if tool is not None:
            found = perf_analyzer_rows(tool, server.address, label, plan, budget, server.metrics_url)
            report.rows.extend(found)
    finally:
        server.stop()
        # The session host's counts, logged as it stops (--shared-sessions): the rows it ran per run.
        hosted = [line.rstrip() for line in server.tail if SHARED_RUNS in line]
        report.log.extend(f"[{label}] {line}" for line in hosted[: len(MODELS)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", type=Path, help="a .md file or a folder (default: $OUT)")
    parser.add_argument("--dry", action="store_true", default=os.environ.get("GPU_CHECK_DRY") == "1")
    parser.add_argument("--budget-s", type=float, default=330.0, help="bound of the whole measurement")
    parser.add_argument("--instances", type=int, default=1, help="KIND_GPU instances on GPU 0")
    parser.add_argument(
        "--client-processes", type=int, default=4, help="the load generator's processes (served points)"
    )
    parser.add_argument("--server-workers", type=int, default=1, help="`serve --workers` (server processes)")
    parser.add_argument("--providers", default="cuda,tensorrt,cpu", help="some of cuda,tensorrt,cpu")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="demo models' cache")
    parser.add_argument(
        "--work-dir", type=Path, help="repository copies, engine cache (default: .cache/gpu_check, not $OUT)"
    )
    parser.add_argument("--tests-summary", type=Path, help="a file whose last line is pytest's summary")
    parser.add_argument(
        "--perf-analyzer", type=Path, help="perf_analyzer: also measure the resnets through it, wire and shm"
    )
    parser.add_argument(
        "--without-perf-analyzer", metavar="WHY", help="why perf_analyzer is not run (the report)"
    )
    parser.add_argument("--note", action="append", default=[], help="a line for the report's context")
    parser.add_argument(
        "--server-arg", action="append", default=[], help="a further `serve` flag (repeatable; '--x=y' form)"
    )
    parser.add_argument(
        "--pa-model", action="append", default=[], choices=("resnet", "resnet_u8"),
        help="perf_analyzer's models (repeatable; default both resnets)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    target = args.path or Path(os.environ.get("OUT") or "out/gpu_check")
    plan = plan_for(args.dry, args.instances, args.client_processes, args.server_workers)
    plan = dataclasses.replace(plan, server_args=tuple(args.server_arg))
    if args.pa_model:
        plan = dataclasses.replace(plan, pa_models=tuple(args.pa_model))
    asked = {name.strip() for name in args.providers.split(",")}
    chosen = [p for p in PROVIDERS if p.key in asked]
    counts = (args.instances, args.client_processes, args.server_workers, args.budget_s)
    if len(chosen) != len(asked) or min(counts) <= 0:
        parser.error(
            "--providers must name cuda, tensorrt or cpu; --instances, --client-processes, --server-workers "
            "and --budget-s must be positive"
        )
    if args.perf_analyzer is not None and not (
        args.perf_analyzer.is_file() and os.access(args.perf_analyzer, os.X_OK)
    ):
        parser.error(f"--perf-analyzer {args.perf_analyzer}: no executable file there")
    import onnxruntime as ort

    if not args.dry and "CUDAExecutionProvider" not in ort.get_available_providers():
        print(
            "gpu_check: onnxruntime lists no CUDAExecutionProvider (install .[gpu]; --dry for CPU)",
            file=sys.stderr,
        )
        return 1
    budget = Budget(args.budget_s)
    summary = None
    if args.tests_summary and args.tests_summary.is_file():
        summary = (args.tests_summary.read_text().strip().splitlines() or [None])[-1]
    report = Report(args.dry, machine_context(plan, summary))
    if args.perf_analyzer is not None:
        report.context.append(perf_analyzer_context(args.perf_analyzer, plan))
    elif args.without_perf_analyzer:
        report.context.append(f"perf_analyzer: not run ({args.without_perf_analyzer})")
    report.context.extend(args.note)
    work = args.work_dir or DEFAULT_CACHE_DIR / "gpu_check"
    signal.signal(signal.SIGTERM, _stopped)  # the script's limit: the table is still written
    try:
        demo = build_demo(args.cache_dir)  # up to 300 s on a bare machine: the limit may come here
    except Stopped:
        report.log.append("[demo] stopped by SIGTERM (the time limit) while building: nothing measured")
        chosen = []
    for provider in chosen:
        print(f"gpu_check: {plan.label(provider)} ({budget.left():.0f} s left)", file=sys.stderr, flush=True)
        try:
            check_provider(demo, work, provider, plan, budget, report, args.perf_analyzer)
        except Stopped:
            report.log.append(
                f"[{plan.label(provider)}] stopped by SIGTERM (the time limit): the rest not run"
            )
            break
        except Exception as err:  # the table is still written, with what was measured
            report.log.append(
                f"[{plan.label(provider)}] check stopped: {type(err).__name__}: {first_line(err)}"
            )
    md, js = write(report, target)
    print(f"gpu_check: wrote {md} and {js}", file=sys.stderr)
    return verdict(report)


class Stopped(Exception):
    """SIGTERM arrived (scripts/gpu_check.sh's limit)."""


def _stopped(signum: int, frame: object) -> None:
    raise Stopped()


def verdict(report: Report) -> int:
    """1 where figures the run was for are missing or not GPU ones, with a line saying which."""
    not_gpu = report.not_gpu
    if not_gpu:
        print(f"gpu_check: {', '.join(not_gpu)} did not start: those rows are CPU figures", file=sys.stderr)
        return 1
    stopped = [line for line in report.log if "] check stopped: " in line or "] stopped by SIGTERM" in line]
    unserved = sorted({f"{r.provider}: {r.note}" for r in report.rows if r.note in (NOT_SERVED, OUT_OF_TIME)})
    if stopped or unserved:
        print(f"gpu_check: not every point was measured: {'; '.join([*stopped, *unserved])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
