"""How long one large request holds the server's event loop: the slowest of a stream of small
pings (an identity model) sent while another connection sends one large request, against a real
server on 127.0.0.1 (RELIABILITY.md, "Decoding one by one").

    .venv/bin/python scripts/loop_stall.py

Rows: BYTES requests of N random-length strings (raw form) and FP32 requests of N typed
`contents` values, at and past the per-request bounds of server/protocol/codec.py.
"""

from __future__ import annotations

import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from loadtest.server import SpawnedServer
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc

IDENTITY = 'name: "{name}"\nbackend: "identity"\nmax_batch_size: 0\n'
IDENTITY += 'input [ {{ name: "x" data_type: {t} dims: [ -1 ] }} ]\n'
IDENTITY += 'output [ {{ name: "y" data_type: {t} dims: [ -1 ] }} ]\n'


def repository(root: Path) -> Path:
    for name, t in (("strings", "TYPE_STRING"), ("floats", "TYPE_FP32"), ("ping", "TYPE_FP32")):
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(IDENTITY.format(name=name, t=t))
    return root


def big_request(kind: str, n: int) -> pb.ModelInferRequest:
    rng = np.random.default_rng(0)
    request = pb.ModelInferRequest(model_name="strings" if kind == "BYTES" else "floats")
    tensor = request.inputs.add(name="x", datatype="BYTES" if kind == "BYTES" else "FP32", shape=[n])
    if kind == "BYTES":
        lengths = rng.integers(0, 16, n)
        request.raw_input_contents.append(b"".join(struct.pack("<I", k) + b"a" * k for k in lengths))
    else:
        tensor.contents.fp32_contents.extend(rng.random(n, dtype=np.float32).tolist())
    return request


def ping_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="ping")
    request.inputs.add(name="x", datatype="FP32", shape=[4])
    request.raw_input_contents.append(np.zeros(4, np.float32).tobytes())
    return request


def measure(address: str, big: pb.ModelInferRequest) -> tuple[str, float, float]:
    """(the big request's outcome, its seconds, the slowest ping's ms while it ran)."""
    outcome: list[str] = []
    took: list[float] = []

    def send() -> None:
        with grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", -1)]) as ch:
            start = time.perf_counter()
            try:
                pb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(big, timeout=120)
                outcome.append("OK")
            except grpc.RpcError as err:
                outcome.append(err.code().name)
            took.append(time.perf_counter() - start)

    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stub.ModelInfer(ping_request(), timeout=10)  # connected and warm
        sender = threading.Thread(target=send)
        sender.start()
        slowest = 0.0
        for _ in range(100_000):  # bounded; ends when the big request is answered
            if not sender.is_alive():
                break
            start = time.perf_counter()
            stub.ModelInfer(ping_request(), timeout=60)
            slowest = max(slowest, time.perf_counter() - start)
        sender.join()
    return outcome[0], took[0], slowest * 1e3


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory() as work:
        repo = repository(Path(work) / "repo")
        with SpawnedServer(Path(work) / "cache", ("--model-repository", str(repo))) as server:
            print("| request | outcome | its time | slowest ping meanwhile |")
            print("|---|---|---|---|")
            for kind, n in (("BYTES", 262_144), ("BYTES", 5_000_000), ("FP32 typed", 2_097_152),
                            ("FP32 typed", 8_000_000)):  # fmt: skip
                outcome, seconds, ping_ms = measure(server.address, big_request(kind, n))
                print(f"| {kind} x {n:,} | {outcome} | {seconds:.2f} s | {ping_ms:.0f} ms |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
