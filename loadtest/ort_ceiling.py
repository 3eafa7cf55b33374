"""Raw onnxruntime's ceiling for a model: rows/s at given batch sizes, no server, no gRPC.

    .venv/bin/python -m loadtest.ort_ceiling MODEL.onnx --batch 1,8,32,64 --seconds 3
    .venv/bin/python -m loadtest.ort_ceiling REPO/silero_vad/1/model.onnx --batch 1,64,256

Inputs are random, of each input's type; every dimension that is not a fixed number (the batch
dimension, wherever it is: Silero VAD's state has it on axis 1) is the batch size. Runs
`InferenceSession.run` back to back on one thread of Python for `seconds` per batch size (at
least `--min-runs` runs); intra-op threads as onnxruntime's default unless `--threads`, no
spinning unless `--spin` (as the server's defaults).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from loadtest import proc

_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(bool)": np.bool_,
}


def feeds(session: ort.InferenceSession, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for arg in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else batch for d in arg.shape]
        dtype = _DTYPES.get(arg.type)
        if dtype is None:
            raise SystemExit(f"input {arg.name}: type {arg.type} is not supported here")
        values = rng.random(shape)
        out[arg.name] = (values * 255).astype(dtype) if np.dtype(dtype).kind in "iu" else values.astype(dtype)
    return out


def measure(session: ort.InferenceSession, batch: int, seconds: float, min_runs: int) -> tuple[float, float]:
    """(rows/s, mean ms per run) at `batch` rows per run."""
    inputs = feeds(session, batch, np.random.default_rng(batch))
    session.run(None, inputs)  # warm-up
    runs, start = 0, time.perf_counter()
    while runs < min_runs or time.perf_counter() - start < seconds:
        session.run(None, inputs)
        runs += 1
    elapsed = time.perf_counter() - start
    return runs * batch / elapsed, elapsed / runs * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--batch", default="1,8,32,64")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--min-runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime's default)")
    parser.add_argument(
        "--spin", action="store_true", help="let onnxruntime's threads spin (off, as the server)"
    )
    args = parser.parse_args(argv)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    # As the server's default (allow_spinning false): spinning threads on a shared 2-core machine
    # measured 9 vs 45 resnet images/s here.
    spin = "1" if args.spin else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    session = ort.InferenceSession(str(args.model), options, providers=["CPUExecutionProvider"])
    load = proc.load_average()
    print(f"{args.model} (intra-op threads {args.threads or 'default'}; load average {load})")
    print("| batch | rows/s | ms per run |\n|---:|---:|---:|")
    for batch in (int(b) for b in args.batch.split(",")):
        rows_s, ms = measure(session, batch, args.seconds, args.min_runs)
        print(f"| {batch} | {rows_s:.0f} | {ms:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
