"""Whether this machine can run the tests marked `gpu`: onnxruntime must list the CUDA provider (the
onnxruntime-gpu wheel) and `nvidia-smi -L` must name a GPU (a driver and a device). Both are asked
only when a `gpu` test was collected; each probe is an argument, so the rule is tested without either.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from server.backends.gpu_devices import smi_listing

CUDA_PROVIDER = "CUDAExecutionProvider"
NVIDIA_SMI_TIMEOUT_S = 15.0


def onnxruntime_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


def nvidia_smi_gpus() -> str | None:
    """`nvidia-smi -L`'s output, or None where it is missing, fails or hangs."""
    return smi_listing(NVIDIA_SMI_TIMEOUT_S)


def gpu_skip_reason(
    providers: Callable[[], Sequence[str]] = onnxruntime_providers,
    gpus: Callable[[], str | None] = nvidia_smi_gpus,
) -> str | None:
    """Why the `gpu` tests cannot run here, or None when they can."""
    if CUDA_PROVIDER not in providers():
        return f"no GPU: onnxruntime does not list {CUDA_PROVIDER} (install sluiceway[gpu])"
    listing = gpus()
    if listing is None:
        return "no GPU: `nvidia-smi -L` is missing or failed"
    if not any(line.startswith("GPU ") for line in listing.splitlines()):
        return "no GPU: `nvidia-smi -L` lists no device"
    return None
