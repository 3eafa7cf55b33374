"""What a padded batch's host copies cost, in this process, no GPU: the batch padded into a new
array and then copied into the staging buffer (the form before 2026-12-04), against the padding
written straight into the staging buffer (server/backends/pinned.py, fill), for resnet's input.

    .venv/bin/python -m loadtest.pad_staging_cost [--rows 33] [--size 64] [--repeat 15]

The staging buffer here is ordinary host memory, allocated once: on a CUDA instance it is pinned
memory of the same size, which the CPU writes as fast. Bounded: `--repeat` rounds, each form once
a round (alternating), median and best milliseconds printed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np

from server.backends.batch_padding import pad
from server.backends.pinned import fill

IMAGE = (3, 224, 224)  # resnet's input row: 602 KB of FP32


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=33, help="the batch's rows")
    parser.add_argument("--size", type=int, default=64, help="the padded size")
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args(argv)
    if not 0 < args.rows <= args.size or args.repeat < 1:
        parser.error("need 0 < --rows <= --size and --repeat >= 1")
    batch = np.random.default_rng(0).standard_normal((args.rows, *IMAGE)).astype(np.float32)
    staging = np.empty((args.size, *IMAGE), np.float32)

    def pad_then_stage() -> None:
        np.copyto(staging, pad({"image": batch}, args.rows, args.size)["image"])

    def padded_in_staging() -> None:
        fill(staging, batch)

    forms: dict[str, Callable[[], None]] = {
        "pad, then stage": pad_then_stage,
        "padded in staging": padded_in_staging,
    }
    times: dict[str, list[float]] = {name: [] for name in forms}
    for form in forms.values():
        form()  # first touch of the pages, outside the timing
    for _ in range(args.repeat):
        for name, form in forms.items():
            began = time.perf_counter()
            form()
            times[name].append((time.perf_counter() - began) * 1e3)
    print(f"resnet rows {args.rows} padded to {args.size}, {args.repeat} rounds:")
    for name, ms in times.items():
        print(f"  {name:18s} median {statistics.median(ms):6.2f} ms, best {min(ms):6.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
