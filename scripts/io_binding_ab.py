"""Rows per second of one instance's runs with IO binding against session.run, on this machine.

    .venv/bin/python scripts/io_binding_ab.py [--seconds 0.5] [--rounds 3] [--threads 1]

Runs the demo MLP and ResNet through OrtBackend.run_blocking (what the batcher calls) with the
model parameter `io_binding` off and on, alternating the order each round, and prints the median
rows/s of each and their ratio (bound / plain) per batch size. Outputs are checked equal first.
On the CPU provider this decides the default (server/backends/io_binding.py); on a GPU, run it
with onnxruntime-gpu and `--providers CUDAExecutionProvider,CPUExecutionProvider`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server.backends.onnxruntime_backend import OrtBackend, OrtOptions
from server.models.demo import build_demo_repository

MODELS = {"mlp": ("features", (64,), (1, 8, 64)), "resnet": ("image", (3, 224, 224), (1, 8))}


def rate(instance: OrtBackend, feed: dict[str, np.ndarray], rows: int, seconds: float) -> float:
    runs, start = 0, time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        instance.run_blocking(feed)
        runs += 1
    return runs * rows / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=0.5, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--providers", default="CPUExecutionProvider")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache/demo"))
    args = parser.parse_args()
    repo = build_demo_repository(args.cache_dir)
    providers = [(name, {}) for name in args.providers.split(",")]
    print("| model | batch | session.run rows/s | IO binding rows/s | ratio |")
    print("|---|---|---|---|---|")
    for model, (name, shape, batches) in MODELS.items():
        path = repo / model / "1" / "model.onnx"
        plain, bound = (
            OrtBackend(
                path,
                OrtOptions(intra_op_threads=args.threads, io_binding=flag),
                providers,
                ThreadPoolExecutor(1),
            )
            for flag in (False, True)
        )
        for rows in batches:
            feed = {name: np.random.default_rng(rows).standard_normal((rows, *shape)).astype(np.float32)}
            for key, value in plain.run_blocking(feed).items():
                np.testing.assert_allclose(bound.run_blocking(feed)[key], value, rtol=1e-5, atol=1e-5)
            seconds = args.seconds * (4 if model == "resnet" else 1)
            got: dict[str, list[float]] = {"plain": [], "bound": []}
            for round_ in range(args.rounds):
                order = [("plain", plain), ("bound", bound)]
                for label, instance in order if round_ % 2 == 0 else order[::-1]:
                    got[label].append(rate(instance, feed, rows, seconds))
            p, b = statistics.median(got["plain"]), statistics.median(got["bound"])
            print(f"| {model} | {rows} | {p:,.0f} | {b:,.0f} | {b / p:.2f} |")
        plain.close()
        bound.close()


if __name__ == "__main__":
    main()
