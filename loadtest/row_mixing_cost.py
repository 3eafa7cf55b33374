"""The load's reading of ops that mix rows (server/backends/onnx_row_mixing.py), timed per model:
the median of ROUNDS calls after one untimed call (onnx's first inference in a process).

    python -m loadtest.row_mixing_cost MODEL.onnx [MODEL.onnx ...]
    bash loadtest/ab_row_mixing_cost.sh REF MODEL.onnx ...   # the same at an earlier commit, interleaved
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import onnx

from server.backends.onnx_row_mixing import row_mixing_outputs


def median_ms(model: onnx.ModelProto, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        row_mixing_outputs(model)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    loaded = {path: onnx.load(path, load_external_data=False) for path in args.models}
    row_mixing_outputs(next(iter(loaded.values())))  # onnx's once-a-process costs, untimed
    for path, model in loaded.items():
        print(f"{path}\t{median_ms(model, args.rounds):.1f} ms")


if __name__ == "__main__":
    main()
