"""What one server takes in of resnet-sized requests when the model costs nothing: a graph that only
averages its 602 KB input (3x224x224 FP32), served on this machine's CPU, driven by perf_analyzer
over the wire and with system shared memory, with the server's CPU per row.

    .venv/bin/python -m loadtest.transport_ceiling [--concurrency 16,64] [--rounds 2] [--workers 1]
        [--server-arg=--shared-sessions=all ...] [--perf-analyzer PATH]

Why: on an H200 the served resnet did 0.12 of raw onnxruntime's best batch (BENCHMARKS.md section
16), 602 KB a request into one Python process. This bounds the request path alone: what any
model with that input could be served at by one process on this machine, wire against shared
memory (every worker's regions with `--workers`, server/protocol/shm_book.py). The model file is
written to a temporary repository and removed; the server binds only 127.0.0.1; every
perf_analyzer point is time-boxed (loadtest/gpu_perf_analyzer.py).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from loadtest import proc
from loadtest.gpu_perf_analyzer import executions, run_point
from loadtest.gpu_plan import Plan, plan_for
from loadtest.gpu_report import PA_SHM, PA_WIRE
from loadtest.graph_model import write_graph_model
from loadtest.model_statistics import every_workers_batches, rows_and_runs
from loadtest.perf_analyzer_path import PerfAnalyzerMissing, find_perf_analyzer
from loadtest.perf_analyzer_table import STOPPED
from loadtest.server import SpawnedServer

MODEL = "meanpool"


def write_model(repo: Path) -> None:
    """`image` FP32 [N, 3, 224, 224] -> `mean` FP32 [N, 1]: one ReduceMean, max_batch_size 64."""
    from onnx import TensorProto, helper

    axes = helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3])
    one = helper.make_tensor("one", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["image", "axes"], ["flat"], keepdims=0),
            helper.make_node("Unsqueeze", ["flat", "one"], ["mean"]),
        ],
        MODEL,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["N", 1])],
        [axes, one],
    )
    write_graph_model(repo, graph, "max_batch_size: 64\ndynamic_batching { }\n")


HOST_MODULE = b"server.backends.session_host"


def tree_cpu_s(pid: int) -> tuple[float, float]:
    """CPU seconds of `pid` and its descendants (a server's `--workers` processes), and of the
    session host among them (0 without `--shared-sessions`): one process, whose CPU a row bounds
    what every worker together can hand it."""
    total = host = 0.0
    for member in proc.descendants(pid):
        with contextlib.suppress(OSError):  # (ended meanwhile)
            used = proc.cpu_s(member)
            total += used
            # (an argument of its own: `python -m server.backends.session_host`, not a mention)
            if HOST_MODULE in Path(f"/proc/{member}/cmdline").read_bytes().split(b"\0"):
                host += used
    return total, host


def rows_run(address: str, workers: int) -> tuple[int, int]:
    """(rows, runs) the server has run: every worker's statistics under `--workers`."""
    if workers == 1:
        return executions(address, MODEL)
    return rows_and_runs(every_workers_batches(address, MODEL, workers))


def point(tool: Path, server: SpawnedServer, level: int, shm: bool, plan: Plan, workers: int) -> str:
    """One perf_analyzer point: its rate and p50, the batches it ran and the server's CPU per row
    (its processes', the session host's too). Against several workers each of perf_analyzer's
    requests in flight has a connection of its own (gpu_perf_analyzer.spread_env), since the
    forty-first session: the rates of section 39 had come over its default 3 to 11."""
    assert server.process is not None
    before, (cpu, host) = rows_run(server.address, workers), tree_cpu_s(server.process.pid)
    row = run_point(tool, server.address, MODEL, level, PA_SHM if shm else PA_WIRE, plan, 120.0)
    after, (cpu_after, host_after) = rows_run(server.address, workers), tree_cpu_s(server.process.pid)
    rows, runs = after[0] - before[0], after[1] - before[1]
    rate, p50 = float(row["Inferences/Second"]), float(row["p50 latency"]) / 1e3
    stopped = f" ({row[STOPPED]})" if STOPPED in row else ""
    host_part = f" (session host {1e3 * (host_after - host) / max(rows, 1):.2f})" if host_after else ""
    return (
        f"{rate:7.1f} rows/s, avg batch {rows / max(runs, 1):.1f}, "
        f"server CPU {1e3 * (cpu_after - cpu) / max(rows, 1):.2f} ms a row{host_part}, "
        f"p50 {p50:.1f} ms{stopped}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="16,64")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="`serve --workers`")
    parser.add_argument("--server-arg", action="append", default=[], help="a further `serve` flag ('--x=y')")
    parser.add_argument("--perf-analyzer", type=Path)
    args = parser.parse_args(argv)
    try:
        tool = find_perf_analyzer(args.perf_analyzer)
    except PerfAnalyzerMissing as err:
        print(f"transport_ceiling: {err}", file=sys.stderr)
        return 2
    levels = [int(n) for n in args.concurrency.split(",")]
    plan = dataclasses.replace(plan_for(False), served_s=3.0)  # windows of 1.5 s, three a point
    extra = ["--allow-client-shm", "--workers", str(args.workers), *args.server_arg]
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        write_model(repo)
        with SpawnedServer(Path(tmp) / "cache", ["--model-repository", str(repo), *extra]) as server:
            for round_ in range(1, args.rounds + 1):
                for level in levels:
                    for shm in (False, True):
                        try:
                            line = point(tool, server, level, shm, plan, args.workers)
                        except RuntimeError as err:  # said (a stall's view went to stderr); the rest go on
                            line = "failed: " + str(err).strip().splitlines()[0]
                        print(
                            f"round {round_} {level} in flight {'shm ' if shm else 'wire'}: {line}",
                            flush=True,
                        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
