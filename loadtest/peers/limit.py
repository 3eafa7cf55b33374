"""The compute limit: onnxruntime in-process, no server, same model file and thread settings.

    .venv/bin/python -m loadtest.peers.limit --model mlp --seconds 2
    .venv/bin/python -m loadtest.peers.limit --model resnet --intra-op-threads 2 --seconds 5

For each batch size 1, 2, 4, ... up to the model's max_batch_size (the max itself always included)
it calls `session.run` back to back for `--seconds` and prints rows/s (images/s for resnet) and the
latency of one run; then the best, and one JSON line (`{"peer": "limit", ...}`) for the harness.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from loadtest.peers.common import SPECS, add_model_args, intra_threads, model_file, ort_session


def batch_sizes(max_batch_size: int) -> list[int]:
    sizes = []
    size = 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    return [*sizes, max_batch_size]


def measure(session: Any, feeds: dict[str, np.ndarray], output: str, seconds: float) -> dict[str, float]:
    session.run([output], feeds)  # warm-up: first run allocates arenas
    runs = 0
    start = time.perf_counter()
    deadline = start + seconds
    now = start
    while now < deadline:
        session.run([output], feeds)
        runs += 1
        now = time.perf_counter()
    rows = runs * int(next(iter(feeds.values())).shape[0])
    elapsed = now - start
    return {"runs": runs, "rows_per_s": rows / elapsed, "ms_per_run": 1000 * elapsed / runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.peers.limit", description=__doc__.split("\n")[0]
    )
    add_model_args(parser, port=None)
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per batch size")
    parser.add_argument("--max-batch", type=int, default=0, help="largest batch (0: the model's max)")
    args = parser.parse_args(argv)
    spec = SPECS[args.model]
    session = ort_session(model_file(args.model, args.cache_dir), intra_threads(args), args.inter_op_threads)
    unit = "images/s" if args.model == "resnet" else "rows/s"
    rng = np.random.default_rng(0)
    results: dict[int, dict[str, float]] = {}
    for size in batch_sizes(args.max_batch or spec.max_batch_size):
        data = rng.random((size, *spec.input_dims), dtype=np.float32)
        results[size] = measure(session, {spec.input: data}, spec.output, args.seconds)
        r = results[size]
        print(f"batch {size:4d}: {r['rows_per_s']:10.1f} {unit}  {r['ms_per_run']:8.3f} ms/run", flush=True)
    best = max(results, key=lambda size: results[size]["rows_per_s"])
    print(f"best: batch {best}, {results[best]['rows_per_s']:.1f} {unit}")
    summary = {
        "peer": "limit",
        "model": spec.name,
        "intra_op_threads": intra_threads(args),
        "inter_op_threads": args.inter_op_threads,
        "unit": unit,
        "best_batch": best,
        "best_rows_per_s": round(results[best]["rows_per_s"], 1),
        "by_batch": {str(k): {n: round(v, 3) for n, v in r.items()} for k, r in results.items()},
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
