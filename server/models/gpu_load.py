"""What a load decides differently for instances on a GPU: no batch runs inline on the event loop.

The batcher runs a batch on the event loop when its recent runs cost less CPU time than a thread
hop (batcher/estimate.py). A GPU run's cost is mostly the device's, which the thread's CPU time
need not show, and the loop would wait for the device meanwhile: an instance on a GPU makes the
model's batches always go through the instance's executor.

Not done at load, measured: running every batch size once before READY (for cuDNN's per-shape
algorithm search). On an H200 it took 9.1 s per resnet load, and served resnet at 16 in flight
still did 67 rows/s, p50 222 ms (run 1, on another H200 without it: 32 rows/s; raw at a steady
batch of 8: 5,539-6,361 rows/s on those machines): onnxruntime's CUDA Conv keeps the plan of its
last input shape only, so what helps is a steady shape (server/backends/batch_padding.py).
"""

from __future__ import annotations

from collections.abc import Sequence


def on_gpu(devices: Sequence[str]) -> bool:
    """Whether any instance runs on a GPU (instance_device: `cuda:0`, else `cpu`)."""
    return any(device.startswith("cuda") for device in devices)


def inline_limit_s(devices: Sequence[str], inline_run_max_us: int) -> float:
    """The batcher's inline_max_s: the setting's, or 0 (never inline) when an instance is on a GPU."""
    return 0.0 if on_gpu(devices) else inline_run_max_us / 1e6
