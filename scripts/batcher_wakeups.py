"""The dispatcher's work while a batch waits out its queue delay, on uvloop (the server's loop):
formations per batch and the event loop's CPU per request, the batcher alone (no gRPC, a backend
that answers at once). uvloop's timers round to whole milliseconds and fire up to ~1.2 ms early, so
a dispatcher that forms again at every wake-up forms many times per delay.

    .venv/bin/python scripts/batcher_wakeups.py [--requests N]

Prints a Markdown table. Run it in two trees to compare commits (BENCHMARKS.md, "The dispatcher's
wake-ups"); figures are this machine's, to be compared within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the batcher of this tree
import batcher.dynamic
from batcher import BatchingPolicy, DynamicBatcher, ModelStats, Tensors

ROW = {"x": np.zeros((1, 16), np.float32)}


class Doubling:
    async def run(self, inputs: Tensors) -> Tensors:
        return {"y": inputs["x"] * 2}


async def measure(delay_s: float, in_flight: int, requests: int) -> tuple[float, float, float]:
    """(formations per batch, CPU µs per request, wall ms per request) over `requests` requests
    from `in_flight` callers that each send their next one when answered."""
    policy = BatchingPolicy(max_batch_size=64, preferred_batch_sizes=(64,), max_queue_delay_s=delay_s)
    stats = ModelStats()
    b = DynamicBatcher([Doubling()], policy, stats)
    b.start()
    per_caller = requests // in_flight

    async def caller() -> None:
        for _ in range(per_caller):
            await b.submit(ROW, 1)

    formed = [0]
    real_form = batcher.dynamic.form_batch

    def counting_form(*args: Any, **kwargs: Any) -> Any:
        formed[0] += 1
        return real_form(*args, **kwargs)

    batcher.dynamic.form_batch = counting_form  # this process only: the script's own batcher
    try:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(in_flight)))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    finally:
        batcher.dynamic.form_batch = real_form
        await b.stop()
    sent = per_caller * in_flight
    return formed[0] / max(1, stats.execution_count), cpu / sent * 1e6, wall / sent * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="per row of the table (default 400)")
    args = parser.parse_args(argv)
    print("| max_queue_delay | in flight | formations per batch | loop CPU per request | wall per request |")
    print("|---|---|---|---|---|")
    for delay_s in (0.0005, 0.0045):
        for in_flight in (1, 8):
            formed, cpu_us, wall_ms = uvloop.run(measure(delay_s, in_flight, args.requests))
            row = (f"{delay_s * 1e3:g} ms", str(in_flight), f"{formed:.1f}")
            row += (f"{cpu_us:.0f} µs", f"{wall_ms:.2f} ms")
            print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
