"""NVIDIA Triton through PyTriton, serving a demo model with onnxruntime and Triton's dynamic batcher.

    .venv/bin/python -m loadtest.peers.pytriton --model mlp --port 8102

First use installs `nvidia-pytriton` (it bundles tritonserver, about 450 MB) into
`.cache/peers/pytriton/venv`. gRPC binds 127.0.0.1:PORT; HTTP and metrics take free 127.0.0.1 ports.
Same model name, tensor names, datatypes and max_batch_size as sluiceway, so one load scenario runs
against both. Prints `ready on 127.0.0.1:PORT`; SIGTERM/SIGINT stop tritonserver and exit.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from loadtest.peers.common import (
    add_model_args,
    ensure_venv,
    exec_peer_app,
    libpython_dir,
    onnxruntime_pin,
)

PYTRITON_VERSION = "0.7.0"  # wheel tag manylinux_2_35: runs on Debian 12 (glibc 2.36)
APP = Path(__file__).with_name("_pytriton_app.py")


def requirements() -> list[str]:
    return [f"nvidia-pytriton=={PYTRITON_VERSION}", "numpy==1.26.4", onnxruntime_pin()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.peers.pytriton", description=__doc__.split("\n")[0]
    )
    add_model_args(parser)
    parser.add_argument(
        "--max-queue-delay-us", type=int, default=100, help="Triton dynamic batcher max_queue_delay"
    )
    parser.add_argument("--log-level", default="WARNING", help="log level of the pytriton process")
    args = parser.parse_args(argv)
    python = ensure_venv("pytriton", requirements())
    env = dict(os.environ)
    # The Python backend stub embeds libpython: it must find the venv interpreter's own one first.
    lib = libpython_dir(python)
    env["LD_LIBRARY_PATH"] = lib + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    env.pop("PYTHONPATH", None)
    extra = ["--max-queue-delay-us", str(args.max_queue_delay_us), "--log-level", args.log_level]
    exec_peer_app(python, APP, args, env, extra)
    return 1  # not reached: exec replaced this process


if __name__ == "__main__":
    raise SystemExit(main())
