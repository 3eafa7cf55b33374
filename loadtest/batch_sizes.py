"""The batch sizes a server runs for a model under a closed loop: ModelStatistics' batch counts
over one load window, for each model and level in flight, on a spawned server (demo models).

    .venv/bin/python -m loadtest.batch_sizes [--models resnet_u8,mlp] [--concurrency 16,64]
        [--duration-s 4]

Why: a CUDA instance pads batches to a size that changes only with the load (server/backends/
batch_padding.py), and each change costs a cuDNN plan build per convolution; how the batcher cuts
batches decides how often the size would change. Bounded: one load run per point, each with a
timeout; binds only 127.0.0.1.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections.abc import Sequence

from loadtest.model_statistics import batches_run
from loadtest.server import SpawnedServer


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet_u8,mlp")
    parser.add_argument("--concurrency", default="16,64")
    parser.add_argument("--duration-s", type=float, default=4.0)
    args = parser.parse_args(argv)
    levels = [int(n) for n in args.concurrency.split(",")]
    with SpawnedServer() as server, tempfile.TemporaryDirectory() as out:
        for model in args.models.split(","):
            for level in levels:
                before = batches_run(server.address, model)
                load = [sys.executable, "-m", "loadtest", "--target", server.address, "--model", model,
                        "--concurrency", str(level), "--duration-s", str(args.duration_s), "--warmup-s",
                        "0.5", "--rounds", "1", "--quiet", "--no-plots", "--out", out]  # fmt: skip
                subprocess.run(load, capture_output=True, timeout=args.duration_s + 120, check=True)
                ran = batches_run(server.address, model)
                ran.subtract(before)
                sizes = ", ".join(f"{size} x{count}" for size, count in sorted((+ran).items()))
                print(f"{model} at {level} in flight: batches {sizes}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
