"""The cost of the server's `max_concurrent_rpcs` bound on each call (server/protocol/rpc_slots.py):
a handler wrapped as the server wraps it, with a slot taken and given back, against the same
wrapper without slots, in one process, alternating rounds. The per-call RPC path is ~100+ us on
2 cores; this says how much of it the slot takes, where a served A/B is lost in machine noise.

    .venv/bin/python -m loadtest.slot_cost [--calls 200000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

from server.protocol import malformed
from server.protocol.rpc_slots import RpcSlots


class _Context:
    async def read(self) -> bytes:
        return b"request"


async def _answer(request: Any, context: Any) -> Any:
    return request


async def _frames(count: int) -> AsyncIterator[int]:
    for i in range(count):
        yield i


async def _answers(requests: AsyncIterator[int], context: Any) -> AsyncIterator[int]:
    async for request in requests:
        yield request


async def _unary_us(slots: RpcSlots | None, calls: int) -> float:
    handler = malformed._refusing("unary_unary", _answer, None, slots)
    context = _Context()
    start = time.perf_counter()
    for _ in range(calls):
        await handler(None, context)
    return (time.perf_counter() - start) / calls * 1e6


async def _stream_us(gated: bool, frames: int) -> float:
    """Per message of one stream: the in-band stream's wrapper (one async generator more) or none."""
    handler = malformed._gated_stream(_answers, RpcSlots(1)) if gated else _answers
    start = time.perf_counter()
    async for _ in handler(_frames(frames), _Context()):
        pass
    return (time.perf_counter() - start) / frames * 1e6


async def _main(calls: int, rounds: int) -> None:
    unary: dict[str, list[float]] = {"without": [], "with": []}
    stream: dict[str, list[float]] = {"without": [], "with": []}
    for _ in range(rounds):
        unary["without"].append(await _unary_us(None, calls))
        unary["with"].append(await _unary_us(RpcSlots(calls + 1), calls))
        stream["without"].append(await _stream_us(False, calls))
        stream["with"].append(await _stream_us(True, calls))
    for name, runs in (("unary call", unary), ("stream message", stream)):
        without, with_ = statistics.median(runs["without"]), statistics.median(runs["with"])
        print(f"{name}: {without:.3f} us without the slot, {with_:.3f} us with it: +{with_ - without:.3f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(_main(min(args.calls, 10_000_000), min(args.rounds, 100)))  # bounded


if __name__ == "__main__":
    main()
