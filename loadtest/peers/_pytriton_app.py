"""PyTriton serving one demo model through onnxruntime. Runs INSIDE the pytriton peer venv.

Started by `python -m loadtest.peers.pytriton` (which installs the venv and sets LD_LIBRARY_PATH);
imports nothing from sluiceway. Triton's own dynamic batcher forms the batches; the bound function
runs one batch through onnxruntime.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from typing import Any

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

HOST = "127.0.0.1"


def session(path: str, intra: int, inter: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = intra
    so.inter_op_num_threads = inter
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", required=True, help="ModelSpec JSON with the model file's path")
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--intra-op-threads", type=int, default=0)
    parser.add_argument("--inter-op-threads", type=int, default=1)
    parser.add_argument("--max-queue-delay-us", type=int, default=100)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec: dict[str, Any] = json.loads(args.spec)
    sess = session(spec["path"], args.intra_op_threads, args.inter_op_threads)
    name_in, name_out = spec["input"], spec["output"]

    @batch  # type: ignore[untyped-decorator]
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        (out,) = sess.run([name_out], {name_in: inputs[name_in]})
        return {name_out: out}

    config = TritonConfig(
        grpc_address=HOST,
        grpc_port=args.grpc_port,
        http_address=HOST,
        http_port=args.http_port,
        metrics_address=HOST,
        metrics_port=args.metrics_port,
        allow_gpu_metrics=False,
        exit_timeout_secs=5,
    )
    # No restricted endpoints: perf_analyzer reads ModelStatistics without pytriton's access token.
    security = TritonSecurityConfig(restricted_endpoints=[])
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with Triton(config=config, security_config=security) as triton:
        triton.bind(
            model_name=spec["name"],
            infer_func=infer,
            inputs=[Tensor(name=name_in, dtype=np.float32, shape=tuple(spec["input_dims"]))],
            outputs=[Tensor(name=name_out, dtype=np.float32, shape=tuple(spec["output_dims"]))],
            config=ModelConfig(
                max_batch_size=spec["max_batch_size"],
                batcher=DynamicBatcher(max_queue_delay_microseconds=args.max_queue_delay_us),
            ),
            strict=False,
        )
        triton.run()
        print(f"pytriton (model {spec['name']}) ready on {HOST}:{args.grpc_port}", flush=True)
        # Wake now and then to notice a dead tritonserver or proxy backend, as Triton.serve() does.
        while not stop.wait(2.0):
            if not triton.is_alive():
                print("pytriton: tritonserver or its proxy backend died", file=sys.stderr, flush=True)
                return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
