"""Load the NVIDIA libraries that the `cuda` and `tensorrt` extras install as wheels, once at start.

onnxruntime-gpu's providers find CUDA, cuDNN and TensorRT through the dynamic loader, whose path
does not include site-packages. For its own `[cuda,cudnn]` wheels onnxruntime has
`preload_dlls()` (onnxruntime.ai: CUDA Execution Provider, "Preload DLLs"); TensorRT's wheel
(`tensorrt_libs`) it does not know, so its two libraries the provider links are loaded here with
RTLD_GLOBAL. A library loaded once is what the provider's own dlopen then resolves to. With the
libraries installed system-wide (the CUDA image), nothing is loaded here.

Each effect is an argument, so the rules are tested on machines with neither wheel.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
from collections.abc import Callable, Iterable
from pathlib import Path

from server.runtime_check import normalise

GPU_RUNTIME = "onnxruntime-gpu"
# The wheels of onnxruntime-gpu's `cuda` and `cudnn` extras that preload_dlls() knows.
NVIDIA_RUNTIME_WHEELS = (
    "nvidia-cuda-runtime",
    "nvidia-cuda-runtime-cu12",
    "nvidia-cudnn-cu13",
    "nvidia-cudnn-cu12",
)
# What onnxruntime-gpu 1.31.1's libonnxruntime_providers_tensorrt.so links (readelf -d: NEEDED).
TENSORRT_LIBRARIES = ("libnvinfer.so.10", "libnvonnxparser.so.10")


def installed_names() -> set[str]:
    return {normalise(dist.metadata.get("Name") or "") for dist in importlib.metadata.distributions()}


def tensorrt_folder() -> Path | None:
    """The folder of the `tensorrt_libs` package (tensorrt-cu13-libs), if installed."""
    spec = importlib.util.find_spec("tensorrt_libs")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def onnxruntime_preload() -> None:
    import onnxruntime

    preload = getattr(onnxruntime, "preload_dlls", None)  # onnxruntime >= 1.21
    if preload is not None:
        preload()


def _load_global(path: str) -> object:
    return ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)


def preload_for(
    runtime: str,
    names: Callable[[], Iterable[str]] = installed_names,
    preload_cuda: Callable[[], None] = onnxruntime_preload,
    tensorrt: Callable[[], Path | None] = tensorrt_folder,
    load: Callable[[str], object] = _load_global,
) -> list[str]:
    """Load what the installed wheels provide for `runtime`; one note per action, for the log."""
    if runtime != GPU_RUNTIME:
        return []
    notes: list[str] = []
    present = set(names())
    wheels = sorted(present.intersection(NVIDIA_RUNTIME_WHEELS))
    if wheels:
        preload_cuda()
        notes.append(f"preloaded CUDA and cuDNN from NVIDIA's wheels ({', '.join(wheels)})")
    folder = tensorrt()
    if folder is not None:
        for name in TENSORRT_LIBRARIES:
            path = folder / name
            try:
                load(str(path))
            except OSError as err:
                notes.append(
                    f"TensorRT library {path} did not load ({err}): the TensorRT provider will not start"
                )
            else:
                notes.append(f"preloaded {path}")
    return notes
