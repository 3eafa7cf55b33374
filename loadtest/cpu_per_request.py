"""Server CPU per request, two checkouts side by side: a less noisy A/B than throughput on a busy
2-core machine. Each server (one per checkout, demo models) gets the same closed-loop mlp load in
alternating rounds; the server process's user+system CPU over a round, divided by its requests.

    .venv/bin/python -m loadtest.cpu_per_request OLD_CHECKOUT NEW_CHECKOUT [--rounds 4]
        [--requests 20000] [--concurrency 16]

Use `git worktree add /tmp/old REF` for the older checkout; both run with this venv's Python.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from loadtest.server import DEFAULT_CACHE_DIR
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc

STUB: Any = pb_grpc.GRPCInferenceServiceStub  # generated, unannotated
_READY = re.compile(r"sluiceway ready on [\d.]+:(\d+)")


def _start(checkout: Path) -> tuple[subprocess.Popen[str], int]:
    command = [sys.executable, "-m", "server", "serve", "--port", "0", "--cache-dir", str(DEFAULT_CACHE_DIR)]
    process = subprocess.Popen(
        command, cwd=checkout, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert process.stdout is not None
    for line in process.stdout:
        match = _READY.search(line)
        if match:  # keep draining its output so it never blocks on a full pipe
            threading.Thread(target=process.stdout.read, daemon=True).start()
            return process, int(match.group(1))
    raise RuntimeError(f"server in {checkout} did not start")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    args = parser.parse_args(argv)
    if not (1 <= args.rounds <= 50 and 1 <= args.requests <= 1_000_000 and 1 <= args.concurrency <= 512):
        parser.error("--rounds 1..50, --requests 1..1e6, --concurrency 1..512")
    servers = {"old": _start(args.old), "new": _start(args.new)}
    per_request: dict[str, list[float]] = {name: [] for name in servers}
    try:
        for _ in range(args.rounds):
            for name, (process, port) in servers.items():
                asyncio.run(_load(port, args.requests // 10, args.concurrency))  # warm
                before = _cpu_s(process.pid)
                asyncio.run(_load(port, args.requests, args.concurrency))
                per_request[name].append((_cpu_s(process.pid) - before) / args.requests * 1e6)
    finally:
        for process, _ in servers.values():
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
