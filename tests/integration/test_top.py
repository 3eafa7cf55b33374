"""`sluiceway top --once` against a live server with traffic: it renders every model with a rate
and latency percentiles read from the server's /metrics."""

from __future__ import annotations

import subprocess
import sys
import threading

import grpc
import numpy as np

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.server_process import REPO_ROOT, ServerProcess

MAX_REQUESTS = 20_000  # the traffic stops when `top` exits, or after this many


def test_top_renders_a_live_server() -> None:
    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="features", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(np.zeros((1, 64), np.float32).tobytes())
    done = threading.Event()
    with ServerProcess() as server:
        assert server.metrics_port, server.output()

        def traffic() -> None:
            with grpc.insecure_channel(server.address) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
                for _ in range(MAX_REQUESTS):
                    if done.is_set():
                        return
                    stub.ModelInfer(request, timeout=10)

        sender = threading.Thread(target=traffic)
        sender.start()
        try:
            top = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "server",
                    "top",
                    "--once",
                    "--interval",
                    "1",
                    "--target",
                    server.address,
                    "--metrics-url",
                    f"http://127.0.0.1:{server.metrics_port}/metrics",
                ],
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=120,
                env={"COLUMNS": "160", "PATH": "/usr/bin:/bin"},
            )
        finally:
            done.set()
            sender.join(60)
    assert top.returncode == 0, top.stderr
    lines = top.stdout.splitlines()
    assert any("req/s" in line and "p99 ms" in line for line in lines), top.stdout
    (mlp,) = [line for line in lines if " mlp " in f" {line} "]
    cells = [c.strip() for c in mlp.replace("│", "|").split("|") if c.strip()]
    assert cells[0] == "mlp" and float(cells[2]) > 0, mlp  # requests/s while traffic ran
    assert cells[3] != "-" and float(cells[3]) > 0, mlp  # p50 from the latency histogram
    assert any(" resnet " in f" {line} " for line in lines), top.stdout
