"""The few CUDA runtime calls the server makes itself, through ctypes against libcudart.

onnxruntime-gpu copies tensors for its own runs, but two things need the runtime directly: CUDA
IPC handles of clients' CUDA shared-memory regions (cudaIpcOpenMemHandle / cudaIpcCloseMemHandle,
and cudaMemcpy through them), and pinned host buffers that IO binding stages a batch's inputs in
(cudaHostAlloc / cudaFreeHost). ctypes rather than cuda-python: no dependency, and libcudart is
already in the process once onnxruntime's CUDA provider is (its wheel ships or preloads it).

`CudaRuntime` takes the loaded library as an argument, so the argument and error handling is
tested with a fake library on machines without a GPU; `load_cudart` finds the real one.
"""

from __future__ import annotations

import ctypes
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

IPC_HANDLE_SIZE = 64  # CUDA_IPC_HANDLE_SIZE: bytes of a cudaIpcMemHandle_t
_IPC_LAZY_ENABLE_PEER_ACCESS = 1  # cudaIpcMemLazyEnablePeerAccess, as Triton opens handles
_HOST_TO_DEVICE, _DEVICE_TO_HOST = 1, 2  # cudaMemcpyKind
_HOST_ALLOC_DEFAULT = 0
# Sonames to try, newest first; a soname already loaded by onnxruntime resolves to that copy.
_SONAMES = ("libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so")


class CudaError(RuntimeError):
    """A CUDA runtime call failed; `code` is its cudaError_t and the message names the call."""

    def __init__(self, call: str, code: int, name: str) -> None:
        super().__init__(f"{call} failed: {name} ({code})")
        self.call = call
        self.code = code


class CudaUnavailable(RuntimeError):
    """No usable CUDA runtime library in this process (the message says what was tried)."""


class IpcHandle(ctypes.Structure):
    """cudaIpcMemHandle_t: 64 opaque bytes, passed by value."""

    _fields_ = [("reserved", ctypes.c_char * IPC_HANDLE_SIZE)]


def parse_ipc_handle(raw: bytes) -> IpcHandle:
    """The handle a client sent (tritonclient base64-decodes it before sending: raw bytes here);
    ValueError naming the size when it is not exactly one handle."""
    if len(raw) != IPC_HANDLE_SIZE:
        raise ValueError(
            f"raw_handle must be one cudaIpcMemHandle_t of {IPC_HANDLE_SIZE} bytes, got {len(raw)} bytes"
        )
    handle = IpcHandle()
    ctypes.memmove(ctypes.addressof(handle), raw, IPC_HANDLE_SIZE)
    return handle


class CudaRuntime:
    """Checked wrappers over a libcudart handle (a ctypes.CDLL, or a fake with the same calls)."""

    def __init__(self, lib: Any) -> None:
        self._lib = lib
        self._declare()

    def _declare(self) -> None:
        lib = self._lib
        int_p, void_pp = ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_void_p)
        size, ptr = ctypes.c_size_t, ctypes.c_void_p
        signatures: dict[str, list[Any]] = {
            "cudaGetDeviceCount": [int_p],
            "cudaSetDevice": [ctypes.c_int],
            "cudaIpcOpenMemHandle": [void_pp, IpcHandle, ctypes.c_uint],
            "cudaIpcCloseMemHandle": [ptr],
            "cudaMemcpy": [ptr, ptr, size, ctypes.c_int],
            "cudaHostAlloc": [void_pp, size, ctypes.c_uint],
            "cudaFreeHost": [ptr],
        }
        for name, argtypes in signatures.items():
            function = getattr(lib, name)
            function.argtypes = argtypes
            function.restype = ctypes.c_int
        lib.cudaGetErrorName.argtypes = [ctypes.c_int]
        lib.cudaGetErrorName.restype = ctypes.c_char_p

    def _check(self, call: str, code: int) -> None:
        if code != 0:
            raw = self._lib.cudaGetErrorName(code)
            name = raw.decode("ascii", "replace") if isinstance(raw, bytes) else "cudaError"
            raise CudaError(call, code, name)

    def device_count(self) -> int:
        count = ctypes.c_int(0)
        self._check("cudaGetDeviceCount", self._lib.cudaGetDeviceCount(ctypes.byref(count)))
        return count.value

    def set_device(self, device_id: int) -> None:
        """The calling thread's current device (CUDA keeps one per thread)."""
        self._check("cudaSetDevice", self._lib.cudaSetDevice(device_id))

    def ipc_open(self, handle: IpcHandle, device_id: int) -> int:
        """The device pointer another process exported as `handle`, mapped on `device_id`."""
        self.set_device(device_id)
        pointer = ctypes.c_void_p(0)
        code = self._lib.cudaIpcOpenMemHandle(ctypes.byref(pointer), handle, _IPC_LAZY_ENABLE_PEER_ACCESS)
        self._check("cudaIpcOpenMemHandle", code)
        if not pointer.value:
            raise CudaError("cudaIpcOpenMemHandle", -1, "a null pointer")
        return pointer.value

    def ipc_close(self, pointer: int, device_id: int) -> None:
        self.set_device(device_id)
        self._check("cudaIpcCloseMemHandle", self._lib.cudaIpcCloseMemHandle(ctypes.c_void_p(pointer)))

    def copy_to_host(self, host: int, device: int, nbytes: int, device_id: int) -> None:
        """cudaMemcpy device -> host (synchronous: the bytes are there when it returns)."""
        self.set_device(device_id)
        code = self._lib.cudaMemcpy(ctypes.c_void_p(host), ctypes.c_void_p(device), nbytes, _DEVICE_TO_HOST)
        self._check("cudaMemcpy (device to host)", code)

    def copy_to_device(self, device: int, host: int, nbytes: int, device_id: int) -> None:
        """cudaMemcpy host -> device (synchronous)."""
        self.set_device(device_id)
        code = self._lib.cudaMemcpy(ctypes.c_void_p(device), ctypes.c_void_p(host), nbytes, _HOST_TO_DEVICE)
        self._check("cudaMemcpy (host to device)", code)

    def host_alloc(self, nbytes: int) -> int:
        """A pinned (page-locked) host buffer: the device copies it by DMA, with no staging copy."""
        pointer = ctypes.c_void_p(0)
        self._check(
            "cudaHostAlloc", self._lib.cudaHostAlloc(ctypes.byref(pointer), nbytes, _HOST_ALLOC_DEFAULT)
        )
        if not pointer.value:
            raise CudaError("cudaHostAlloc", -1, "a null pointer")
        return pointer.value

    def free_host(self, pointer: int) -> None:
        self._check("cudaFreeHost", self._lib.cudaFreeHost(ctypes.c_void_p(pointer)))


def _wheel_paths() -> list[Path]:
    """libcudart from the nvidia-cuda-runtime wheels onnxruntime-gpu's `[cuda]` extra installs."""
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return []
    found: list[Path] = []
    for root in spec.submodule_search_locations:
        for folder in ("cuda_runtime/lib", "cu13/lib", "cu12/lib"):
            found.extend(sorted((Path(root) / folder).glob("libcudart.so*"), reverse=True))
    return found


def load_cudart(opener: Callable[[str], Any] = ctypes.CDLL) -> CudaRuntime:
    """The CUDA runtime: a soname the loader (or onnxruntime, already) resolves, else the wheel's
    copy; CudaUnavailable naming every place tried."""
    tried: list[str] = []
    for name in (*_SONAMES, *(str(p) for p in _wheel_paths())):
        try:
            return CudaRuntime(opener(name))
        except (OSError, AttributeError) as err:  # not found, or not a CUDA runtime
            tried.append(f"{name}: {err}")
    raise CudaUnavailable("no CUDA runtime library could be loaded (" + "; ".join(tried[:4]) + ")")
