"""A closed-loop KServe v2 ModelInfer probe with our generated stubs, for peers perf_analyzer can't drive.

    .venv/bin/python -m loadtest.peers.probe --port 8103 --model mlp --concurrency 16 --seconds 3

`--concurrency` coroutines on one grpc.aio channel each send ModelInfer (raw_input_contents, FP32,
`--rows` rows) and wait for the answer, for `--seconds` after a short warm-up. Checks every answer's
output name and shape; prints infer/s, p50 and p99 and one JSON line. Needs only ModelInfer, so it
works against MLServer (no ModelConfig/ModelStatistics) as against sluiceway and the other peers.
Note: a Python client spends CPU that the server would otherwise have; perf_analyzer costs less.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import grpc
import numpy as np

from loadtest.peers.common import HOST, SPECS, ModelSpec
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc

WARMUP_S = 0.5


def infer_request(spec: ModelSpec, rows: int) -> pb.ModelInferRequest:
    data = np.random.default_rng(0).random((rows, *spec.input_dims), dtype=np.float32)
    tensor = pb.ModelInferRequest.InferInputTensor(
        name=spec.input, datatype=spec.datatype, shape=[rows, *spec.input_dims]
    )
    return pb.ModelInferRequest(model_name=spec.name, inputs=[tensor], raw_input_contents=[data.tobytes()])


async def worker(
    stub: pb_grpc.GRPCInferenceServiceStub,
    request: pb.ModelInferRequest,
    expected: list[int],
    start: float,
    end: float,
    latencies: list[float],
    errors: list[str],
) -> None:
    while (now := time.perf_counter()) < end:
        try:
            reply = await stub.ModelInfer(request, timeout=30)
        except grpc.aio.AioRpcError as err:
            errors.append(f"{err.code().name}: {err.details()}")
            continue
        if list(reply.outputs[0].shape) != expected:
            errors.append(f"output shape {list(reply.outputs[0].shape)}, expected {expected}")
        if now >= start:
            latencies.append(time.perf_counter() - now)


async def run(args: argparse.Namespace) -> dict[str, object]:
    spec = SPECS[args.model]
    request = infer_request(spec, args.rows)
    expected = [args.rows, *spec.output_dims]
    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    latencies: list[float] = []
    errors: list[str] = []
    async with grpc.aio.insecure_channel(f"{args.host}:{args.port}", options=options) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        await stub.ModelInfer(request, timeout=30, wait_for_ready=True)
        start = time.perf_counter() + WARMUP_S
        end = start + args.seconds
        await asyncio.gather(
            *(worker(stub, request, expected, start, end, latencies, errors) for _ in range(args.concurrency))
        )
    ms = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    return {
        "peer_port": args.port,
        "model": spec.name,
        "concurrency": args.concurrency,
        "rows": args.rows,
        "requests": len(latencies),
        "infer_per_s": round(len(latencies) / args.seconds, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.peers.probe", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", choices=sorted(SPECS), default="mlp")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rows", type=int, default=1, help="batch dimension of each request")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    print(
        f"{result['model']} c={result['concurrency']}: {result['infer_per_s']} infer/s, "
        f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, errors {result['errors']}"
    )
    print(json.dumps(result))
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
