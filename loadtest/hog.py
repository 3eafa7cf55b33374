"""One client tries to lock everyone out: it opens as many idle ModelStreamInfer calls as it can
over many connections, then a second client measures what it still gets (unary mlp calls and
ServerLive). Prints what each got; exits 1 when the victim was starved.

    .venv/bin/python -m loadtest.hog [--streams 4096] [--connections 32] [--target HOST:PORT]

Without --target it spawns a server with the demo models (`--server-arg` passes flags to it).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import time
from collections.abc import Sequence

import grpc
import numpy as np

from loadtest.server import SpawnedServer
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc

VICTIM_CALLS = 200
OPEN_TIMEOUT_S = 10.0  # a hog stream not answered by then counts as "no answer"


def _mlp() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="features", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(np.zeros((1, 64), np.float32).tobytes())
    return request


async def _open(channel: grpc.aio.Channel, tally: collections.Counter[str]) -> object:
    """Open one stream and wait for its first answer (so the server has it registered)."""
    call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer()  # type: ignore[no-untyped-call]
    try:
        await call.write(_mlp())
        answer = await asyncio.wait_for(call.read(), OPEN_TIMEOUT_S)
        tally["held" if answer is not grpc.aio.EOF and not answer.error_message else "no answer"] += 1
    except grpc.aio.AioRpcError as exc:
        tally[f"refused {exc.code().name}: {exc.details()}"] += 1
    except (asyncio.TimeoutError, grpc.aio.UsageError):
        tally["no answer"] += 1
    return call


async def _victim(address: str) -> dict[str, object]:
    tally: collections.Counter[str] = collections.Counter()
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        try:
            live = (await stub.ServerLive(pb.ServerLiveRequest(), timeout=5)).live
            tally["ServerLive OK" if live else "ServerLive false"] += 1
        except grpc.aio.AioRpcError as exc:
            tally[f"ServerLive {exc.code().name}"] += 1
        for _ in range(VICTIM_CALLS):
            start = time.perf_counter()
            try:
                await stub.ModelInfer(_mlp(), timeout=5)
                tally["ModelInfer OK"] += 1
                latencies.append(time.perf_counter() - start)
            except grpc.aio.AioRpcError as exc:
                tally[f"ModelInfer {exc.code().name}"] += 1
    p50 = float(np.percentile(latencies, 50) * 1e3) if latencies else None
    return {"victim": dict(tally), "victim_p50_ms": p50}


async def run(address: str, streams: int, connections: int) -> dict[str, object]:
    hog_tally: collections.Counter[str] = collections.Counter()
    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(connections)
    ]
    calls: list[object] = []
    try:
        for start in range(0, streams, 256):  # in waves, so the hog itself is not the bottleneck
            wave = range(start, min(streams, start + 256))
            calls += await asyncio.gather(*(_open(channels[i % connections], hog_tally) for i in wave))
        result = await _victim(address)
    finally:
        for channel in channels:
            await channel.close()
    return {"hog": dict(hog_tally), **result}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.hog", description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=4096)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--target", help="HOST:PORT of a running server (default: spawn one)")
    parser.add_argument("--server-arg", action="append", default=[], help="extra flag for the spawned server")
    args = parser.parse_args(argv)
    if args.streams < 1 or args.streams > 20_000 or args.connections < 1:
        parser.error("--streams must be 1..20000 and --connections >= 1")
    if args.target:
        result = asyncio.run(run(args.target, args.streams, args.connections))
    else:
        with SpawnedServer(extra=args.server_arg) as server:
            result = asyncio.run(run(server.address, args.streams, args.connections))
    print(json.dumps(result, indent=2))
    victim = result["victim"]
    assert isinstance(victim, dict)
    starved = victim.get("ModelInfer OK", 0) < VICTIM_CALLS or "ServerLive OK" not in victim
    return 1 if starved else 0


if __name__ == "__main__":
    sys.exit(main())
