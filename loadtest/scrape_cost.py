"""Server CPU per /metrics scrape: an idle server scraped N times, its idle CPU over the same time
taken off. The cost of metrics that the hot path never pays. With `--models M` the server serves
M tiny models of three versions each (the page grows with them), and a ServerLive call every 20 ms
beside the scrapes shows what a scrape costs other calls (the GIL). `--checkout DIR` measures
another checkout's server with this script (the same figures for two commits in one run).

    .venv/bin/python -m loadtest.scrape_cost [--scrapes 300] [--repeats 3] [--models 300]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from loadtest import proc
from loadtest.cpu_per_request import _start
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc

STUB: Any = pb_grpc.GRPCInferenceServiceStub  # generated, unannotated
PROBE_EVERY_S = 0.02


def build_repository(root: Path, models: int) -> None:
    """`models` Identity models (FP32 [-1, 4]), versions 1-3 each, all served."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    for i in range(models):
        folder = root / f"m{i:03d}"
        for version in (1, 2, 3):
            (folder / str(version)).mkdir(parents=True)
            onnx.save(model, str(folder / str(version) / "model.onnx"))
        (folder / "config.pbtxt").write_text(
            f'name: "m{i:03d}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
            'input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
            'output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
            "dynamic_batching { }\nversion_policy: { all { } }\n"
        )


def _probe(port: int, done: threading.Event, out: list[float]) -> None:
    """ServerLive every PROBE_EVERY_S until `done`, each call's ms into `out`."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = STUB(channel)
        while not done.wait(PROBE_EVERY_S):
            start = time.perf_counter()
            stub.ServerLive(pb.ServerLiveRequest(), timeout=30)
            out.append((time.perf_counter() - start) * 1e3)


def _probe_figures(ms: list[float]) -> str:
    if len(ms) < 2:
        return "ServerLive: too few calls"
    p99 = statistics.quantiles(ms, n=100)[98]
    return f"ServerLive p50 {statistics.median(ms):.2f} ms, p99 {p99:.1f} ms, max {max(ms):.1f} ms"


_SCRAPER = """
import statistics, sys, time, urllib.request
url, scrapes, walls, size = sys.argv[1], int(sys.argv[2]), [], 0
for _ in range(scrapes):
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as response:
        size = len(response.read())
    walls.append(time.perf_counter() - start)
print(statistics.median(walls), size)
"""


def measure(port: int, pid: int, url: str, scrapes: int, probe: bool) -> str:
    """One round: idle CPU per second, then `scrapes` scrapes from a process of their own (the
    client's GIL out of ServerLive's way), ServerLive probed beside them."""
    idle_for = threading.Event()
    c0, t0 = proc.cpu_s(pid), time.monotonic()
    idle_for.wait(5.0)  # idle CPU per second, to take off
    idle = (proc.cpu_s(pid) - c0) / (time.monotonic() - t0)
    done, calls = threading.Event(), list[float]()
    prober = threading.Thread(target=_probe, args=(port, done, calls), daemon=True)
    if probe:
        prober.start()
    c0, t0 = proc.cpu_s(pid), time.monotonic()
    try:
        scraper = [sys.executable, "-c", _SCRAPER, url, str(scrapes)]
        wall_s, size = subprocess.run(
            scraper, capture_output=True, text=True, check=True, timeout=3600
        ).stdout.split()
    finally:
        done.set()
    spent = proc.cpu_s(pid) - c0 - idle * (time.monotonic() - t0)
    line = f"{spent / scrapes * 1e3:.2f} ms server CPU per scrape, {float(wall_s) * 1e3:.1f} ms wall"
    line += f" ({size} bytes)"
    if probe:
        prober.join(30)
        line += "; " + _probe_figures(calls)
    return line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.scrape_cost", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--scrapes", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", type=int, default=0, help="serve this many tiny models (0: the demo)")
    parser.add_argument("--checkout", type=Path, default=Path("."), help="the checkout whose server runs")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="scrape-cost-") as scratch:
        extra: list[str] = []
        if args.models:
            build_repository(Path(scratch), args.models)
            extra = ["--model-repository", scratch]
        process, port, url = _start(args.checkout, extra)
        try:
            if url is None:
                raise RuntimeError("the server printed no metrics line")
            for _ in range(args.repeats):
                print(measure(port, process.pid, url, args.scrapes, probe=args.models > 0), flush=True)
        finally:
            process.terminate()
            process.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
