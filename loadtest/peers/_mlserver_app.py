"""Seldon MLServer serving one demo model with adaptive batching. Runs INSIDE the mlserver peer venv.

Started by `python -m loadtest.peers.mlserver`; imports nothing from sluiceway. Everything is set in
code: no model repository scan, no files in the working directory (metrics go to a temporary dir).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import grpc
from mlserver import MLServer
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc import dataplane_pb2_grpc as pb_grpc
from mlserver.settings import ModelParameters, ModelSettings, Settings

HOST = "127.0.0.1"
READY_TIMEOUT_S = 120.0


async def wait_ready(port: int, model: str) -> None:
    """Block until the gRPC port answers ModelReady(model) = true (MLServer loads models after binding)."""
    async with grpc.aio.insecure_channel(f"{HOST}:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT_S
        while loop.time() < deadline:
            try:
                reply = await stub.ModelReady(
                    pb.ModelReadyRequest(name=model), wait_for_ready=True, timeout=5
                )
                if reply.ready:
                    return
            except grpc.aio.AioRpcError as err:
                if err.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE):
                    raise
            await asyncio.sleep(0.05)
    raise TimeoutError(f"model '{model}' not ready on {HOST}:{port} after {READY_TIMEOUT_S} s")


async def serve(args: argparse.Namespace, spec: dict[str, Any]) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="mlserver-peer-"))
    settings = Settings(
        host=HOST,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        metrics_dir=str(workdir / "metrics"),
        model_repository_root=str(workdir),
        load_models_at_startup=False,
        parallel_workers=0,  # 2 cores: inference in the server process, no worker pool
        debug=False,
        grpc_max_message_length=64 * 1024 * 1024,
    )
    model = ModelSettings(
        name=spec["name"],
        implementation="_mlserver_runtime.OnnxRuntimeModel",
        max_batch_size=spec["max_batch_size"],
        max_batch_time=args.max_batch_time_us / 1e6,
        parameters=ModelParameters(
            uri=spec["path"],
            version="1",
            extra={
                "input": spec["input"],
                "output": spec["output"],
                "intra_op_threads": args.intra_op_threads,
                "inter_op_threads": args.inter_op_threads,
            },
        ),
    )
    server = MLServer(settings)  # installs its own SIGTERM/SIGINT/SIGQUIT handlers: stop() ends start()
    running = asyncio.create_task(server.start([model]))
    ready = asyncio.create_task(wait_ready(args.grpc_port, spec["name"]))
    done, _ = await asyncio.wait({running, ready}, return_when=asyncio.FIRST_COMPLETED)
    if ready in done:
        ready.result()
        print(f"mlserver (model {spec['name']}) ready on {HOST}:{args.grpc_port}", flush=True)
    else:
        ready.cancel()
    await running


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", required=True, help="ModelSpec JSON with the model file's path")
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--intra-op-threads", type=int, default=0)
    parser.add_argument("--inter-op-threads", type=int, default=1)
    parser.add_argument("--max-batch-time-us", type=int, default=500)
    args = parser.parse_args()
    # Appended, not prepended: this folder's mlserver.py must not shadow the mlserver package.
    sys.path.append(str(Path(__file__).resolve().parent))
    import uvloop

    uvloop.run(serve(args, json.loads(args.spec)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
