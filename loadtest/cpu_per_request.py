"""Server CPU per request, two checkouts side by side: a less noisy A/B than throughput on a busy
2-core machine. Each server (one per checkout, demo models) gets the same closed-loop mlp load in
alternating rounds; the server process's user+system CPU over a round, divided by its requests.

    .venv/bin/python -m loadtest.cpu_per_request OLD_CHECKOUT NEW_CHECKOUT [--rounds 4]
        [--requests 20000] [--concurrency 16] [--old-args FLAGS] [--new-args FLAGS] [--scrape-s S]

Use `git worktree add /tmp/old REF` for the older checkout; both run with this venv's Python. The
same checkout twice with different flags is an A/B of a setting, e.g. metrics on and off:
`. . --old-args=--no-metrics --scrape-s 1` (the server with metrics is scraped every second while
loaded, as Prometheus would, 15x more often than its default). Metrics ports are free ones.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shlex
import statistics
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from loadtest import proc
from loadtest.server import DEFAULT_CACHE_DIR
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc

STUB: Any = pb_grpc.GRPCInferenceServiceStub  # generated, unannotated
_READY = re.compile(r"sluiceway ready on [\d.]+:(\d+)")
_METRICS = re.compile(r"sluiceway metrics on ([\d.]+:\d+)/metrics")


def _start(checkout: Path, args: Sequence[str] = ()) -> tuple[subprocess.Popen[str], int, str | None]:
    """The server process, its port and its /metrics URL (None: metrics off, or an older checkout)."""
    command = [sys.executable, "-m", "server", "serve", "--port", "0", "--cache-dir", str(DEFAULT_CACHE_DIR)]
    env = {**os.environ, "SLUICEWAY_METRICS_PORT": "0"}  # never 8002; older checkouts ignore it
    process = subprocess.Popen(
        [*command, *args], cwd=checkout, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    assert process.stdout is not None
    metrics = None
    for line in process.stdout:
        found = _METRICS.search(line)
        if found:
            metrics = f"http://{found.group(1)}/metrics"
        match = _READY.search(line)
        if match:  # keep draining its output so it never blocks on a full pipe
            threading.Thread(target=process.stdout.read, daemon=True).start()
            return process, int(match.group(1)), metrics
    raise RuntimeError(f"server in {checkout} did not start")


def _scrape_until(url: str, every_s: float, done: threading.Event) -> None:
    """Fetch `url` every `every_s` seconds until `done` (a Prometheus stand-in)."""
    while not done.wait(every_s):
        with urllib.request.urlopen(url, timeout=30) as response:
            response.read()


async def _load(port: int, requests: int, concurrency: int) -> None:
    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="features", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(np.zeros((1, 64), np.float32).tobytes())
    left = requests
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = STUB(channel)

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await stub.ModelInfer(request, timeout=10)

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.cpu_per_request", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--old-args", default="", help="flags for the old server (one shell-quoted string)")
    parser.add_argument("--new-args", default="", help="flags for the new server")
    parser.add_argument("--scrape-s", type=float, default=0.0, help="scrape /metrics this often (0: never)")
    args = parser.parse_args(argv)
    if not (1 <= args.rounds <= 50 and 1 <= args.requests <= 1_000_000 and 1 <= args.concurrency <= 512):
        parser.error("--rounds 1..50, --requests 1..1e6, --concurrency 1..512")
    servers = {
        "old": _start(args.old, shlex.split(args.old_args)),
        "new": _start(args.new, shlex.split(args.new_args)),
    }
    per_request: dict[str, list[float]] = {name: [] for name in servers}
    try:
        for _ in range(args.rounds):
            for name, (process, port, metrics) in servers.items():
                asyncio.run(_load(port, args.requests // 10, args.concurrency))  # warm
                done = threading.Event()
                if metrics is not None and args.scrape_s > 0:
                    threading.Thread(target=_scrape_until, args=(metrics, args.scrape_s, done)).start()
                before = proc.cpu_s(process.pid)
                asyncio.run(_load(port, args.requests, args.concurrency))
                per_request[name].append((proc.cpu_s(process.pid) - before) / args.requests * 1e6)
                done.set()
    finally:
        for process, _, _ in servers.values():
            process.terminate()
            process.wait(30)
    for name, values in per_request.items():
        rounds = ", ".join(f"{v:.1f}" for v in values)
        print(f"{name}: server CPU per request (µs) {rounds}; median {statistics.median(values):.1f}")
    ratio = statistics.median(per_request["new"]) / statistics.median(per_request["old"])
    print(f"new/old: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
