"""SIGTERM under load: closed-loop unary clients and streams run against a spawned server until
each has had an answer, then the server gets SIGTERM. Every call's outcome is counted, with how
long the server took to exit. Exits 1 when a call was CANCELLED or left unanswered, or the server
did not exit 0 within its grace period.

    .venv/bin/python -m loadtest.drain [--model mlp] [--clients 32] [--streams 4] [--grace-s 20]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import numpy as np

from loadtest.server import SpawnedServer
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc

STUB: Any = pb_grpc.GRPCInferenceServiceStub  # generated, unannotated
SHAPES = {
    "mlp": ("features", [1, 64], np.float32, "FP32"),
    "resnet_u8": ("frame", [1, 224, 224, 3], np.uint8, "UINT8"),
}


def _request(model: str, rid: str = "") -> pb.ModelInferRequest:
    name, shape, dtype, wire = SHAPES[model]
    request = pb.ModelInferRequest(model_name=model, id=rid)
    request.inputs.add(name=name, datatype=wire, shape=shape)
    request.raw_input_contents.append(np.zeros(shape, dtype).tobytes())
    return request


async def run(
    server: SpawnedServer, model: str, clients: int, streams: int, grace_s: float
) -> dict[str, Any]:
    outcomes: collections.Counter[str] = collections.Counter()
    stream_ends: collections.Counter[str] = collections.Counter()
    sent = answered = stream_sent = stream_answered = 0
    started = asyncio.Event()
    ready: set[str] = set()
    stop_sending = asyncio.Event()

    def seen(who: str) -> None:
        ready.add(who)
        if len(ready) == clients + streams:
            started.set()

    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = STUB(channel)

        async def client(index: int) -> None:
            nonlocal sent, answered
            while True:  # ends at the first error: the server is going away
                sent += 1
                try:
                    await stub.ModelInfer(_request(model), timeout=grace_s + 30)
                    outcomes["OK"] += 1
                    seen(f"c{index}")
                except grpc.aio.AioRpcError as exc:
                    outcomes[f"{exc.code().name}: {(exc.details() or '')[:60]}"] += 1
                    return
                finally:
                    answered += 1

        async def stream(index: int) -> None:
            nonlocal stream_sent, stream_answered

            async def requests() -> AsyncIterator[pb.ModelInferRequest]:
                n = 0
                while not stop_sending.is_set() and n < 1_000_000:
                    n += 1
                    stream_sent_add()
                    yield _request("mlp", f"{index}-{n}")
                    await asyncio.sleep(0)

            def stream_sent_add() -> None:
                nonlocal stream_sent
                stream_sent += 1

            try:
                async for answer in stub.ModelStreamInfer(requests(), timeout=grace_s + 30):
                    stream_answered += 1
                    outcomes["stream " + (answer.error_message.split(":")[0] or "OK")] += 1
                    if answer.error_message:  # "server is shutting down ... stop sending"
                        stop_sending.set()
                    seen(f"s{index}")
                stream_ends["OK"] += 1
            except grpc.aio.AioRpcError as exc:
                stream_ends[f"{exc.code().name}: {(exc.details() or '')[:40]}"] += 1

        tasks = [asyncio.create_task(client(i)) for i in range(clients)]
        tasks += [asyncio.create_task(stream(i)) for i in range(streams)]
        await asyncio.wait_for(started.wait(), 120)
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        sigterm_at = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*tasks), grace_s + 60)
        stop_sending.set()
    code = await asyncio.to_thread(server.process.wait, grace_s + 60)
    return {
        "unary_sent": sent,
        "unary_answered": answered,
        "stream_frames_answered": stream_answered,
        "outcomes": dict(outcomes),
        "stream_ends": dict(stream_ends),
        "exit_code": code,
        "exit_after_s": round(time.monotonic() - sigterm_at, 3),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.drain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(SHAPES), default="mlp")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--grace-s", type=float, default=20.0)
    args = parser.parse_args(argv)
    if not 0 < args.clients + args.streams <= 512:
        parser.error("--clients plus --streams must be 1..512")
    with SpawnedServer(extra=["--shutdown-grace-s", str(args.grace_s)]) as server:
        result = asyncio.run(run(server, args.model, args.clients, args.streams, args.grace_s))
    print(json.dumps(result, indent=2))
    cancelled = any(
        k.startswith(("CANCELLED", "INTERNAL")) for k in [*result["outcomes"], *result["stream_ends"]]
    )
    bad = (
        cancelled
        or result["unary_sent"] != result["unary_answered"]
        or result["exit_code"] != 0
        or result["exit_after_s"] > args.grace_s
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
