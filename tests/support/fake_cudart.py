"""A stand-in for libcudart, for the CUDA code's tests on machines without a GPU.

It answers the calls server/backends/cudart.py makes, through the same ctypes argument
conversions. Its "device" memory is host memory (ctypes buffers), so a region's reads and writes,
and pinned staging, move real bytes the tests can check; IPC handles are 64-byte keys the test
exports for a buffer. Error codes are CUDA's numbers for the cases the tests provoke.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

SUCCESS = 0
INVALID_VALUE = 1  # cudaErrorInvalidValue
OUT_OF_MEMORY = 2  # cudaErrorMemoryAllocation
INVALID_DEVICE = 101  # cudaErrorInvalidDevice
MAP_FAILED = 205  # cudaErrorMapBufferObjectFailed: what a stale IPC handle gives
NAMES = {INVALID_VALUE: b"cudaErrorInvalidValue", INVALID_DEVICE: b"cudaErrorInvalidDevice"}
NAMES[MAP_FAILED] = b"cudaErrorMapBufferObjectFailed"
NAMES[OUT_OF_MEMORY] = b"cudaErrorMemoryAllocation"
PAGE = 4096


class _Function:
    """A C function as ctypes shows it: callable, with argtypes and restype to set."""

    def __init__(self, body: Callable[..., int | bytes]) -> None:
        self.body = body
        self.argtypes: list[Any] = []
        self.restype: Any = None
        self.calls = 0

    def __call__(self, *args: Any) -> int | bytes:
        self.calls += 1
        return self.body(*args)


def _target(ref: Any) -> Any:
    """The object a ctypes.byref(...) points at."""
    return ref._obj


def _address(pointer: Any) -> int:
    """A pointer argument as an int (the wrappers pass ctypes.c_void_p)."""
    return int(pointer.value or 0) if isinstance(pointer, ctypes.c_void_p) else int(pointer)


class FakeCudart:
    """The library handle: attributes named as libcudart's functions."""

    def __init__(self, devices: int = 1) -> None:
        self.devices = devices
        self.current = 0
        self.exported: dict[bytes, tuple[int, int]] = {}  # handle -> (address, size)
        self.buffers: list[ctypes.Array[ctypes.c_char]] = []  # keeps "device" and pinned memory alive
        self.open: dict[int, int] = {}  # mapped address -> device
        self.opens: dict[int, int] = {}  # mapped address -> times opened and not yet closed
        self.closed: list[int] = []
        self.pinned: dict[int, int] = {}  # pinned address -> size, while allocated
        self.fail_copies = False
        self.fail_allocs = False
        self.cudaGetDeviceCount = _Function(self._count)
        self.cudaSetDevice = _Function(self._set)
        self.cudaIpcOpenMemHandle = _Function(self._ipc_open)
        self.cudaIpcCloseMemHandle = _Function(self._ipc_close)
        self.cudaMemcpy = _Function(self._memcpy)
        self.cudaHostAlloc = _Function(self._host_alloc)
        self.cudaFreeHost = _Function(self._free_host)
        self.cudaGetErrorName = _Function(lambda code: NAMES.get(code, b"cudaErrorUnknown"))

    # -- what a client process would do ---------------------------------------------------------

    def export(self, size: int, fill: bytes = b"") -> tuple[bytes, int]:
        """A "device" buffer of `size` bytes (starting with `fill`) and a handle to it."""
        buffer = ctypes.create_string_buffer(fill, size)
        self.buffers.append(buffer)
        handle = len(self.exported).to_bytes(4, "little") + b"\xab" * 60
        self.exported[handle] = (ctypes.addressof(buffer), size)
        return handle, ctypes.addressof(buffer)

    @staticmethod
    def read(address: int, size: int) -> bytes:
        return ctypes.string_at(address, size)

    # -- the library's functions ----------------------------------------------------------------

    def _count(self, count_ref: Any) -> int:
        _target(count_ref).value = self.devices
        return SUCCESS

    def _set(self, device: int) -> int:
        if not 0 <= device < self.devices:
            return INVALID_DEVICE
        self.current = device
        return SUCCESS

    def _ipc_open(self, pointer_ref: Any, handle: Any, flags: int) -> int:
        found = self.exported.get(ctypes.string_at(ctypes.addressof(handle), 64))
        if found is None:
            return MAP_FAILED
        _target(pointer_ref).value = found[0]
        self.open[found[0]] = self.current
        # As CUDA: a handle opened again in the same context gives the same pointer, counted.
        self.opens[found[0]] = self.opens.get(found[0], 0) + 1
        return SUCCESS

    def _ipc_close(self, pointer: int) -> int:
        address = _address(pointer)
        if address not in self.opens:
            return INVALID_VALUE
        self.opens[address] -= 1
        if not self.opens[address]:  # the last open of it: unmapped
            del self.opens[address]
            del self.open[address]
            self.closed.append(address)
        return SUCCESS

    def _memcpy(self, dst: int, src: int, size: int, kind: int) -> int:
        if self.fail_copies:
            return INVALID_VALUE
        ctypes.memmove(_address(dst), _address(src), size)
        return SUCCESS

    def _host_alloc(self, pointer_ref: Any, size: int, flags: int) -> int:
        if self.fail_allocs:
            return OUT_OF_MEMORY
        buffer = ctypes.create_string_buffer(size + PAGE)  # page-aligned, as cudaHostAlloc's
        self.buffers.append(buffer)
        address = -(-ctypes.addressof(buffer) // PAGE) * PAGE
        _target(pointer_ref).value = address
        self.pinned[address] = size
        return SUCCESS

    def _free_host(self, pointer: int) -> int:
        return SUCCESS if self.pinned.pop(_address(pointer), None) is not None else INVALID_VALUE
