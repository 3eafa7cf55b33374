"""Streaming against unary with perf_analyzer, same server, alternating rounds; a markdown table.

    .venv/bin/python -m loadtest.stream_ratio --model mlp --concurrency 16 --rounds 3
    .venv/bin/python -m loadtest.stream_ratio --variant base= --variant w2="--workers 2"

Each variant is a fresh `sluiceway serve` (demo models, a free 127.0.0.1 port) with its extra
arguments (or `NAME=ENV:KEY=VALUE;...` for environment settings such as SLUICEWAY_*), or with
`NAME=FLOOR:ARGS` the bare transport (`loadtest.peers.floor ARGS`, e.g. `--api sync --mode echo`)
in its place. Per round,
every variant's server is measured unary then --streaming, variants interleaved, so machine noise
hits both modes of a round alike: the ratio is taken within each round. Also CPU per answered
request: the server process's (/proc) and perf_analyzer's own (its rusage), from ModelStatistics'
success count over each whole perf_analyzer run. Bounded: rounds x variants
x 2 perf_analyzer runs, each limited by its measurement window and a timeout.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shlex
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from loadtest import proc
from loadtest.perf_analyzer_path import PerfAnalyzerMissing, find_perf_analyzer
from loadtest.perf_analyzer_table import run_perf_analyzer
from loadtest.server import DEFAULT_CACHE_DIR, SpawnedServer
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc


class SpawnedFloor(SpawnedServer):
    """The bare grpc transport (loadtest.peers.floor) in sluiceway's place: a FLOOR: variant."""

    ready_pattern = re.compile(r"floor \(.*\) ready on ([\d.]+):(\d+)")

    def __init__(self, cache_dir: Path, extra: list[str]) -> None:
        super().__init__(cache_dir, extra)
        floor = [sys.executable, "-m", "loadtest.peers.floor", "--port", "0"]
        self.command = [*floor, "--cache-dir", str(cache_dir), *extra]


@dataclass
class Variant:
    name: str
    args: list[str]
    env: dict[str, str]
    floor: bool = False  # loadtest.peers.floor instead of sluiceway
    unary: list[float] = field(default_factory=list)
    stream: list[float] = field(default_factory=list)
    # (server, client) CPU microseconds per answered request, per round
    unary_cpu: list[tuple[float, float]] = field(default_factory=list)
    stream_cpu: list[tuple[float, float]] = field(default_factory=list)


def parse_variant(text: str) -> Variant:
    """`name=--flag value ...`, `name=ENV:KEY=VALUE;KEY=VALUE` or `name=FLOOR:--flag value ...`."""
    name, _, rest = text.partition("=")
    if rest.startswith("FLOOR:"):
        return Variant(name, shlex.split(rest[6:]), {}, floor=True)
    if rest.startswith("ENV:"):
        pairs = [p.split("=", 1) for p in rest[4:].split(";") if p]
        return Variant(name, [], {k: v for k, v in pairs})
    return Variant(name, shlex.split(rest), {})


def start(variant: Variant, cache_dir: Path) -> SpawnedServer:
    old = {k: os.environ.get(k) for k in variant.env}
    os.environ.update(variant.env)  # inherited by the child only; restored at once
    try:
        if variant.floor:
            return SpawnedFloor(cache_dir, variant.args).start()
        return SpawnedServer(cache_dir, variant.args).start()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def server_cpu_s(server: SpawnedServer) -> float:
    """User + system CPU seconds of the server process so far."""
    assert server.process is not None
    return proc.cpu_s(server.process.pid)


def children_cpu_s() -> float:
    """CPU seconds of this process's waited-for children (each perf_analyzer run, once it ended)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def answered(server: SpawnedServer, model: str) -> int:
    """Requests the server has answered successfully for `model` (ModelStatistics)."""
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=10)
    return sum(m.inference_stats.success.count for m in stats.model_stats)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--interval-ms", type=int, default=3000)
    # A noisy shared machine rarely gives perf_analyzer's default 10%; the ratio is within a round.
    parser.add_argument("--stability", type=int, default=50, help="perf_analyzer --stability-percentage")
    parser.add_argument("--variant", action="append", default=[], help="NAME=ARGS or NAME=ENV:K=V;...")
    parser.add_argument("--perf-analyzer", type=Path, help="default: as crosscheck finds it")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    args = parser.parse_args(argv)
    try:  # before a server is started
        args.perf_analyzer = find_perf_analyzer(args.perf_analyzer)
    except PerfAnalyzerMissing as exc:
        print(f"stream_ratio: {exc}", file=sys.stderr)
        return 2
    variants = [parse_variant(v) for v in args.variant] or [Variant("main", [], {})]
    servers = []
    try:
        for variant in variants:
            servers.append(start(variant, args.cache_dir))
        print(f"load average before: {proc.load_average()}", flush=True)
        for r in range(args.rounds):
            for variant, server in zip(variants, servers, strict=True):
                for streaming in (False, True):
                    # CPU per answered request over the whole perf_analyzer run (its warm-up and
                    # every trial): the server process's, and perf_analyzer's own.
                    cpu0, client0, n0 = server_cpu_s(server), children_cpu_s(), answered(server, args.model)
                    row = run_perf_analyzer(
                        args.perf_analyzer, server.port, args.model, args.concurrency, streaming,
                        args.interval_ms, max_trials=10, stability_percentage=args.stability,
                    )  # fmt: skip
                    n = max(1, answered(server, args.model) - n0)
                    cpu = ((server_cpu_s(server) - cpu0) / n * 1e6, (children_cpu_s() - client0) / n * 1e6)
                    rate = float(row["Inferences/Second"])
                    (variant.stream if streaming else variant.unary).append(rate)
                    (variant.stream_cpu if streaming else variant.unary_cpu).append(cpu)
                print(
                    f"round {r + 1} {variant.name}: unary {variant.unary[-1]:.0f}/s, stream "
                    f"{variant.stream[-1]:.0f}/s, ratio {variant.stream[-1] / variant.unary[-1]:.2f}",
                    flush=True,
                )
    finally:
        for server in servers:
            server.stop()
    print(f"load average after: {proc.load_average()}\n")
    print(f"{args.model}, {args.concurrency} in flight, {args.rounds} rounds of {args.interval_ms} ms")
    print(
        "| variant | unary infer/s | stream infer/s | stream/unary (median of rounds) | ratio per round "
        "| server CPU us/req unary, stream | perf_analyzer CPU us/req unary, stream |"
    )
    print("|---|---:|---:|---:|---|---|---|")
    for v in variants:
        ratios = [s / u for s, u in zip(v.stream, v.unary, strict=True)]
        own = (statistics.median(c[0] for c in v.unary_cpu), statistics.median(c[0] for c in v.stream_cpu))
        client = (statistics.median(c[1] for c in v.unary_cpu), statistics.median(c[1] for c in v.stream_cpu))
        print(
            f"| {v.name} | {statistics.median(v.unary):.0f} | {statistics.median(v.stream):.0f} "
            f"| {statistics.median(ratios):.2f} | {' / '.join(f'{x:.2f}' for x in ratios)} "
            f"| {own[0]:.0f}, {own[1]:.0f} | {client[0]:.0f}, {client[1]:.0f} |"
        )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
