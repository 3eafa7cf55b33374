"""What reading a shared-memory input costs, in this process, no server: the mapping's view copied
(the form before 2026-12-03, whose touch a client truncating its object made a SIGBUS) against
pread into a new array (server/protocol/shm_regions.py, Region.read), for a few tensor sizes.

    .venv/bin/python -m loadtest.shm_read_cost [--sizes 256,602112,4194304] [--repeat 200]

Bounded: `--repeat` reads of each size, median microseconds printed; the object lives in /dev/shm
and is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from server.protocol.shm_regions import open_region


def _median_us(read: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        read()
        times.append(time.perf_counter_ns() - t0)
    return statistics.median(times) / 1e3


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="256,602112,4194304", help="bytes, comma-separated")
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    key = f"sluiceway_shm_read_cost_{uuid.uuid4().hex[:8]}"
    path = Path("/dev/shm") / key
    path.write_bytes(os.urandom(max(sizes)))
    try:
        region = open_region("cost", "/" + key, 0, max(sizes), Path("/dev/shm"))
        print("| bytes | mapping view copied, us | pread into a new array, us | ratio |")
        print("|---:|---:|---:|---:|")
        for size in sizes:
            view = lambda size=size: np.frombuffer(region.mapping, np.uint8, count=size).copy()  # noqa: E731
            pread = lambda size=size: region.read(0, size)  # noqa: E731
            before, after = _median_us(view, args.repeat), _median_us(pread, args.repeat)
            print(f"| {size} | {before:.1f} | {after:.1f} | {after / before:.2f} |")
        region.mapping.close()
        os.close(region.fd)
    finally:
        path.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
