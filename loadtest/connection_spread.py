"""What a load generator's connections do to `serve --workers N`: the kernel spreads connections,
not requests, over the workers (SO_REUSEPORT), so a client with few connections leaves workers
idle. Against a model whose every run sleeps 20 ms (one request a run, one instance a worker: a
worker's rate is bounded without using the CPU, so the figure holds on a small machine), the same
closed loop through the harness with one connection a client process and with one a user, and
through perf_analyzer with its default channel sharing (6 of its clients to a connection) and with
none (TRITON_CLIENT_GRPC_CHANNEL_MAX_SHARE_COUNT=1).

    .venv/bin/python -m loadtest.connection_spread [--workers 4] [--concurrency 16] [--processes 2]
        [--rounds 2] [--perf-analyzer PATH]

The model is written to a temporary repository; the server binds only 127.0.0.1; every point is
bounded (a few seconds of load; perf_analyzer time-boxed as in the GPU check).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

from loadtest.cli import build_parser, run
from loadtest.gpu_perf_analyzer import SHARE_COUNT
from loadtest.graph_model import write_graph_model
from loadtest.perf_analyzer_path import PerfAnalyzerMissing, find_perf_analyzer
from loadtest.perf_analyzer_table import run_perf_analyzer
from loadtest.server import SpawnedServer

MODEL = "sleepy"
SLEEP_S = 0.02


def write_model(repo: Path) -> None:
    """`x` FP32 [N, 4] -> `y`, an Identity whose every run first sleeps SLEEP_S (the fault
    backend's hang, which waits without the CPU), max_batch_size 1: one request a run."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        MODEL,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    write_graph_model(
        repo,
        graph,
        "max_batch_size: 1\ndynamic_batching { }\ninstance_group [ { count: 1 kind: KIND_CPU } ]\n"
        'parameters { key: "fault_hang_every" value: { string_value: "1" } }\n'
        f'parameters {{ key: "fault_hang_s" value: {{ string_value: "{SLEEP_S}" }} }}\n',
    )


def harness_rate(
    address: str, concurrency: int, processes: int, connections: int, duration_s: float
) -> float:
    args = build_parser().parse_args(
        ["--target", address, "--model", MODEL, "--concurrency", str(concurrency), "--processes",
         str(processes), "--connections", str(connections), "--duration-s", str(duration_s),
         "--warmup-s", "1", "--quiet"]
    )  # fmt: skip
    return float(run(args)["results"][0]["throughput_rps"])


def perf_analyzer_rate(tool: Path, port: int, concurrency: int, env: dict[str, str]) -> float:
    found = run_perf_analyzer(tool, port, MODEL, concurrency, False, 2000, 3, 999, limit_s=60.0, env=env)
    return float(found["Inferences/Second"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--processes", type=int, default=2, help="the harness's client processes")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--duration-s", type=float, default=4.0, help="the harness's measured seconds a point"
    )
    parser.add_argument("--perf-analyzer", type=Path)
    args = parser.parse_args(argv)
    try:
        tool: Path | None = find_perf_analyzer(args.perf_analyzer)
    except PerfAnalyzerMissing as err:
        print(f"(perf_analyzer rows skipped: {err})")
        tool = None
    per_user = -(-args.concurrency // args.processes)
    ways = [
        (f"harness, {args.processes} processes x 1 connection", 1),
        ("harness, 1 connection a user", per_user),
    ]
    with tempfile.TemporaryDirectory() as folder:
        repo = Path(folder) / "repo"
        write_model(repo)
        extra = ["--model-repository", str(repo), "--workers", str(args.workers), "--allow-fault-injection"]
        with SpawnedServer(extra=extra) as server:
            ceiling = args.workers / SLEEP_S
            print(
                f"`serve --workers {args.workers}`, {args.concurrency} in flight, {SLEEP_S * 1000:.0f} ms a "
                f"run: at most {ceiling:.0f} requests/s with every worker busy, {1 / SLEEP_S:.0f} a worker"
            )
            print("| client | round | requests/s |\n| --- | ---: | ---: |")
            for round_index in range(1, args.rounds + 1):
                for label, connections in ways:
                    rate = harness_rate(
                        server.address, args.concurrency, args.processes, connections, args.duration_s
                    )
                    print(f"| {label} | {round_index} | {rate:.1f} |", flush=True)
                if tool is None:
                    continue
                sharing: tuple[tuple[str, dict[str, str]], ...] = (
                    ("perf_analyzer, default sharing", {}),
                    (f"perf_analyzer, {SHARE_COUNT}=1", {SHARE_COUNT: "1"}),
                )
                for label, env in sharing:
                    rate = perf_analyzer_rate(tool, server.port, args.concurrency, env)
                    print(f"| {label} | {round_index} | {rate:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
