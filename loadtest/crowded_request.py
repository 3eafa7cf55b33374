"""How long one request crowded with parameters holds a server's other calls
(server/protocol/field_counts.py).

    .venv/bin/python -m loadtest.crowded_request --target 127.0.0.1:8001 [--mib 18]

Sends one ModelInfer for `mlp` whose request parameters fill `--mib` MiB (distinct keys, 16 bytes
an entry) while a second channel sends ServerLive every 10 ms, and prints the crowded call's time
and status and the slowest ServerLive meanwhile. Bounded: one crowded call, a probe that stops with
it. A server whose `max_message_bytes` is below the request refuses it RESOURCE_EXHAUSTED unparsed.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from typing import NamedTuple

import grpc

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc

ENTRY_BYTES = 16  # "k0000000" and an int64 parameter, with their tags and lengths


class Stall(NamedTuple):
    request_bytes: int
    call_s: float
    status: str  # "OK" or "CODE: details"
    slowest_live_s: float


def crowded(mib: float) -> bytes:
    request = pb.ModelInferRequest(model_name="mlp", id="crowded")
    for i in range(int(mib * 2**20 / ENTRY_BYTES)):
        request.parameters[f"k{i:07d}"].int64_param = 1
    data: bytes = request.SerializeToString()
    return data


async def measure(target: str, mib: float) -> Stall:
    data = crowded(mib)
    options = [("grpc.max_send_message_length", -1)]
    async with (
        grpc.aio.insecure_channel(target, options=options) as sender,
        grpc.aio.insecure_channel(target) as prober,
    ):
        live = pb_grpc.GRPCInferenceServiceStub(prober).ServerLive  # type: ignore[no-untyped-call]
        await live(pb.ServerLiveRequest(), timeout=30)
        done = asyncio.Event()
        slowest = 0.0

        async def probe() -> None:
            nonlocal slowest
            while not done.is_set():
                start = time.perf_counter()
                await live(pb.ServerLiveRequest(), timeout=60)
                slowest = max(slowest, time.perf_counter() - start)
                await asyncio.sleep(0.01)

        probing = asyncio.create_task(probe())
        start = time.perf_counter()
        try:
            await sender.unary_unary("/inference.GRPCInferenceService/ModelInfer")(data, timeout=120)
            status = "OK"
        except grpc.aio.AioRpcError as exc:
            status = f"{exc.code().name}: {exc.details()}"
        call_s = time.perf_counter() - start
        done.set()
        await probing
    return Stall(len(data), call_s, status, slowest)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="127.0.0.1:8001")
    parser.add_argument("--mib", type=float, default=18.0, help="MiB of request parameters")
    args = parser.parse_args(argv)
    stall = asyncio.run(measure(args.target, args.mib))
    print(
        f"request {stall.request_bytes / 2**20:.1f} MiB: the call {stall.call_s * 1e3:.0f} ms, "
        f"{stall.status[:120]}; the slowest ServerLive meanwhile {stall.slowest_live_s * 1e3:.0f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
