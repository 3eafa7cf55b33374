"""What a load of several instances pays to prepare its graph: each instance preparing its own
against the first instance's shared (server/backends/prepared_graph.py).

    .venv/bin/python -m loadtest.prepared_load [--instances 4 --rounds 3]

Builds the dynamically quantized feed-forward block of `loadtest.row_quantization_raw` (per row
at load: parsed and rewritten) and makes `--instances` onnxruntime instances of it through the
server's InstanceFactory, alternately with sharing off (each instance prepares: the code before)
and on, and prints each round's seconds and the medians. CPU only; no server, no network.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from loadtest.row_quantization_raw import ffn_block, quantized_sessions
from server.backends.instances import InstanceFactory
from server.backends.onnxruntime_backend import CPU, OrtOptions


def load_s(path: Path, instances: int, shared: bool) -> float:
    """Seconds to make `instances` instances (as a version's load does, one after another)."""
    factory = InstanceFactory(
        path, OrtOptions(row_quantization=True), [(CPU, {})], name="ffn", workers=1, faults=None,
        planned=instances if shared else 0,
    )  # fmt: skip
    start = time.perf_counter()
    made = [factory.session() for _ in range(instances)]
    seconds = time.perf_counter() - start
    for instance in made:
        instance.close()
    return seconds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.prepared_load", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--instances", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="prepared-"))
    quantized_sessions(ffn_block(folder / "ffn.onnx"), folder / "ffn_int8.onnx")
    path = folder / "ffn_int8.onnx"
    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(args.rounds):
        for shared in (False, True):
            times[shared].append(load_s(path, args.instances, shared))
        print(
            f"round {i}: each prepares {times[False][-1] * 1e3:.1f} ms, shared {times[True][-1] * 1e3:.1f} ms"
        )
    each, shared_s = statistics.median(times[False]), statistics.median(times[True])
    size_mb = path.stat().st_size / 1e6
    print(
        f"{args.instances} instances of the {size_mb:.1f} MB per-row model, medians: each prepares "
        f"{each * 1e3:.1f} ms, shared {shared_s * 1e3:.1f} ms (ratio {shared_s / each:.2f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
