"""What a padded batch's host copies cost, in this process, no GPU: resnet rows sent one a request,
gathered into one array, padded into a new one, then copied into the staging buffer (the form until
2026-12-04), against the requests gathered straight into the staging buffer and the padding written
there (batcher Gathered, server/backends/pinned.py `fill`: one copy).

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

from batcher.scatter import gather
from server.backends.batch_padding import pad
from server.backends.pinned import fill

IMAGE = (3, 224, 224)  # resnet's input row: 602 KB of FP32


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=33, help="the batch's rows (one a request)")
    parser.add_argument("--size", type=int, default=64, help="the padded size")
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args(argv)
    if not 1 < args.rows <= args.size or args.repeat < 1:
        parser.error("need 1 < --rows <= --size and --repeat >= 1")
    rng = np.random.default_rng(0)
    requests = [{"image": rng.standard_normal((1, *IMAGE)).astype(np.float32)} for _ in range(args.rows)]
    staging = np.empty((args.size, *IMAGE), np.float32)

    def three_copies() -> None:
        joined = np.concatenate([r["image"] for r in requests], axis=0)  # the batcher's gather
        np.copyto(staging, pad({"image": joined}, args.rows, args.size)["image"])

    def one_copy() -> None:
        batch, _ = gather(requests, [1] * args.rows)
        fill(staging, batch, "image")

    forms: dict[str, Callable[[], None]] = {
        "gather, pad, stage": three_copies,
        "gathered in staging": one_copy,
    }
    times: dict[str, list[float]] = {name: [] for name in forms}
    for form in forms.values():
        form()  # first touch of the pages, outside the timing
    for _ in range(args.repeat):
        for name, form in forms.items():
            began = time.perf_counter()
            form()
            times[name].append((time.perf_counter() - began) * 1e3)
    print(f"resnet, {args.rows} requests of 1 row padded to {args.size}, {args.repeat} rounds:")
    for name, ms in times.items():
        print(f"  {name:20s} median {statistics.median(ms):6.2f} ms, best {min(ms):6.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
