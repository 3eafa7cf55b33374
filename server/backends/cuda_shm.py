"""CUDA shared memory: the seam the GPU work fills in.

Triton maps a client's CUDA IPC handle (cudaIpcOpenMemHandle) and hands the device pointer to the
backend. Here that needs onnxruntime-gpu (CUDAExecutionProvider, IOBinding on device memory). Until
then every server gets `NoCudaSharedMemory`, which says why: no GPU visible to onnxruntime, or a
GPU visible but CUDA regions not implemented yet. Status and Unregister answer truthfully (no
region is registered: an empty list, NOT_FOUND for a name, unregistering is a no-op, as Triton's
CPU build), so clients and perf_analyzer that clean up CUDA regions by habit keep working;
Register is refused (UNIMPLEMENTED) with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from server.errors import RegionNotFound, Unsupported

CUDA_PROVIDER = "CUDAExecutionProvider"


@dataclass(frozen=True, slots=True)
class CudaRegionInfo:
    name: str
    device_id: int
    byte_size: int


class CudaSharedMemory(Protocol):
    """What the servicer's CudaSharedMemory* RPCs call."""

    def register(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None: ...

    def status(self, name: str) -> Sequence[CudaRegionInfo]: ...

    def unregister(self, name: str) -> None: ...


@dataclass(frozen=True, slots=True)
class NoCudaSharedMemory:
    reason: str

    def register(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None:
        raise Unsupported(f"cannot register CUDA shared memory region '{name}': {self.reason}")

    def status(self, name: str) -> Sequence[CudaRegionInfo]:
        if name:
            raise RegionNotFound(f"Unable to find cuda shared memory region: '{name}' ({self.reason})")
        return []

    def unregister(self, name: str) -> None:
        return None  # nothing can be registered; Triton answers OK for unknown names too


def cuda_shared_memory(available_providers: Sequence[str]) -> CudaSharedMemory:
    """The CUDA shared-memory implementation for a server whose onnxruntime offers these providers."""
    listed = ", ".join(available_providers) or "none"
    if CUDA_PROVIDER not in available_providers:
        return NoCudaSharedMemory(
            "CUDA shared memory needs a GPU: none is visible to this server "
            f"(onnxruntime providers: {listed})"
        )
    # The GPU issue replaces this with an implementation over CUDA IPC handles.
    return NoCudaSharedMemory(
        "CUDA shared memory is not implemented yet: onnxruntime offers a GPU "
        f"(providers: {listed}) but this server maps system shared memory only; use system shared memory"
    )
