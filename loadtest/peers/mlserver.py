"""Seldon MLServer with adaptive batching, serving a demo model through a small onnxruntime runtime.

    .venv/bin/python -m loadtest.peers.mlserver --model mlp --port 8103

First use installs `mlserver` into `.cache/peers/mlserver/venv`. gRPC (KServe v2 dataplane) binds
127.0.0.1:PORT; HTTP and metrics take free 127.0.0.1 ports. `parallel_workers` is 0 (2 cores: the
model runs in the server process); adaptive batching with the model's max_batch_size and
`--max-batch-time-us`. Same model name, tensor names and datatypes as sluiceway. MLServer serves no
ModelConfig or ModelStatistics RPC, so perf_analyzer cannot drive it: use raw ModelInfer calls
(`python -m loadtest.peers.probe`). Prints `ready on 127.0.0.1:PORT`; SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from loadtest.peers.common import add_model_args, ensure_venv, exec_peer_app, onnxruntime_pin

MLSERVER_VERSION = "1.7.1"
APP = Path(__file__).with_name("_mlserver_app.py")


def requirements() -> list[str]:
    # uvloop kept below 0.22 for MLServer 1.7 (as specified for this set-up; 0.22 untried).
    return [f"mlserver=={MLSERVER_VERSION}", "uvloop==0.21.0", onnxruntime_pin()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.peers.mlserver", description=__doc__.split("\n")[0]
    )
    add_model_args(parser)
    parser.add_argument(
        "--max-batch-time-us", type=int, default=500, help="adaptive batching: longest wait to fill a batch"
    )
    args = parser.parse_args(argv)
    python = ensure_venv("mlserver", requirements())
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    exec_peer_app(python, APP, args, env, ["--max-batch-time-us", str(args.max_batch_time_us)])
    return 1  # not reached: exec replaced this process


if __name__ == "__main__":
    raise SystemExit(main())
