"""Whether calls that never send their request message lock other clients out
(server/protocol/message_wait.py).

    .venv/bin/python -m loadtest.silent_calls --target 127.0.0.1:8001 [--calls 4200 --wait-s 35]

Opens `--calls` ModelInfer calls from one client that send neither a message nor a half-close,
then asks ServerLive from another channel 2 s later and again at `--wait-s`, and prints each answer
and how many of the silent calls the server had ended by then. Bounded: the calls are cancelled at
the end (a server without the bounds keeps them until then).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator, Sequence

import grpc

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc

SILENT_PATH = "/inference.GRPCInferenceService/ModelInfer"


async def silent(stop: asyncio.Event) -> AsyncIterator[bytes]:
    """A call's request stream that sends no message and does not half-close until `stop`."""
    await stop.wait()
    yield b""


async def live(target: str) -> str:
    """ServerLive from a channel of its own: "OK" or "CODE: details"."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        try:
            await stub.ServerLive(pb.ServerLiveRequest(), timeout=5)
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
    return "OK"


async def run(target: str, calls: int, wait_s: float) -> list[tuple[float, str, int]]:
    """(seconds after the calls opened, ServerLive's answer, silent calls ended by then) at 2 s and
    at `wait_s`."""
    stop = asyncio.Event()
    seen: list[tuple[float, str, int]] = []
    async with grpc.aio.insecure_channel(target) as channel:
        open_call = channel.stream_unary(SILENT_PATH, request_serializer=bytes, response_deserializer=bytes)
        opened = [open_call(silent(stop)) for _ in range(calls)]
        try:
            for at, pause in ((2.0, 2.0), (wait_s, max(0.0, wait_s - 2.0))):
                await asyncio.sleep(pause)  # the measure's own schedule, not a synchronisation
                seen.append((at, await live(target), sum(call.done() for call in opened)))
        finally:
            stop.set()
            for call in opened:
                call.cancel()
    return seen


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="127.0.0.1:8001")
    parser.add_argument("--calls", type=int, default=4200)
    parser.add_argument("--wait-s", type=float, default=35.0)
    args = parser.parse_args(argv)
    for at, answer, ended in asyncio.run(run(args.target, args.calls, args.wait_s)):
        print(f"+{at:g} s: ServerLive {answer}; {ended} of {args.calls} silent calls ended")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
