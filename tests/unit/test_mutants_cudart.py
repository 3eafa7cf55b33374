"""What the mutation run of the ctypes wrapper over libcudart (server/backends/cudart.py) found
untested: the C signature each call declares, the error a failed call raises (the call's name, its
code, the runtime's name for the code, decoded safely), a success that hands back no pointer, the
flags and copy directions passed, the handle's bytes copied in, where the nvidia-cuda-runtime wheel
keeps libcudart and the order `load_cudart` tries the names in. Without a GPU
(tests/support/fake_cudart.py); tests/MUTANTS.md lists the mutants."""

from __future__ import annotations

import ctypes
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from server.backends import cudart
from server.backends.cudart import (
    IPC_HANDLE_SIZE,
    CudaError,
    CudaRuntime,
    CudaUnavailable,
    IpcHandle,
    load_cudart,
    parse_ipc_handle,
)
from tests.support.fake_cudart import FakeCudart

INIT_ERROR = 3  # cudaErrorInitializationError
SONAMES = ["libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so"]


def _record(lib: FakeCudart, name: str, result: int | None = None) -> list[tuple[Any, ...]]:
    """Every call's arguments to `name`; the fake's own answer, or `result` without running it."""
    function = getattr(lib, name)
    inner = function.body
    calls: list[tuple[Any, ...]] = []

    def body(*args: Any) -> Any:
        calls.append(args)
        return inner(*args) if result is None else result

    function.body = body
    return calls


# -- the declared C signatures --------------------------------------------------------------------


def test_every_call_declares_its_c_signature() -> None:
    """Pointers as pointer types, sizes as size_t, results as int: undeclared, ctypes passes and
    returns a C int, which truncates a 64-bit device or host pointer."""
    lib = FakeCudart()
    CudaRuntime(lib)
    int_p, void_pp = ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_void_p)
    ptr, size = ctypes.c_void_p, ctypes.c_size_t
    expected = {
        "cudaGetDeviceCount": [int_p],
        "cudaSetDevice": [ctypes.c_int],
        "cudaIpcOpenMemHandle": [void_pp, IpcHandle, ctypes.c_uint],
        "cudaIpcCloseMemHandle": [ptr],
        "cudaMemcpy": [ptr, ptr, size, ctypes.c_int],
        "cudaHostAlloc": [void_pp, size, ctypes.c_uint],
        "cudaFreeHost": [ptr],
    }
    for name, argtypes in expected.items():
        function = getattr(lib, name)
        assert (function.argtypes, function.restype) == (argtypes, ctypes.c_int), name
    # The error's name comes back as a C string (bytes), not an int.
    assert (lib.cudaGetErrorName.argtypes, lib.cudaGetErrorName.restype) == ([ctypes.c_int], ctypes.c_char_p)


# -- failed calls ---------------------------------------------------------------------------------


def _fail(lib: FakeCudart, name: str) -> None:
    """`name` answers cudaErrorInitializationError; the runtime names that code."""
    getattr(lib, name).body = lambda *args: INIT_ERROR
    lib.cudaGetErrorName.body = lambda code: b"cudaErrorInitializationError" if code == INIT_ERROR else b"?"


CALLS: list[tuple[str, str, Callable[[CudaRuntime], object]]] = [
    ("cudaGetDeviceCount", "cudaGetDeviceCount", lambda cuda: cuda.device_count()),
    ("cudaSetDevice", "cudaSetDevice", lambda cuda: cuda.set_device(0)),
    ("cudaIpcOpenMemHandle", "cudaIpcOpenMemHandle", lambda cuda: cuda.ipc_open(IpcHandle(), 0)),
    ("cudaIpcCloseMemHandle", "cudaIpcCloseMemHandle", lambda cuda: cuda.ipc_close(4096, 0)),
    ("cudaMemcpy", "cudaMemcpy (device to host)", lambda cuda: cuda.copy_to_host(4096, 8192, 8, 0)),
    ("cudaMemcpy", "cudaMemcpy (host to device)", lambda cuda: cuda.copy_to_device(8192, 4096, 8, 0)),
    ("cudaHostAlloc", "cudaHostAlloc", lambda cuda: cuda.host_alloc(64)),
    ("cudaFreeHost", "cudaFreeHost", lambda cuda: cuda.free_host(4096)),
]


@pytest.mark.parametrize(("function", "call", "action"), CALLS, ids=[c[1] for c in CALLS])
def test_a_failed_call_raises_naming_the_call_and_its_code(
    function: str, call: str, action: Callable[[CudaRuntime], object]
) -> None:
    """The CudaError says which call failed, with the runtime's name and number for the code."""
    lib = FakeCudart()
    _fail(lib, function)
    with pytest.raises(CudaError) as caught:
        action(CudaRuntime(lib))
    assert (caught.value.call, caught.value.code) == (call, INIT_ERROR)
    assert str(caught.value) == f"{call} failed: cudaErrorInitializationError (3)"


def test_an_error_without_a_name_is_called_cuda_error() -> None:
    """cudaGetErrorName answering NULL (None through c_char_p) still gives a readable error."""
    lib = FakeCudart()
    lib.cudaGetErrorName.body = lambda code: None  # type: ignore[assignment,return-value]
    with pytest.raises(CudaError, match=r"^cudaSetDevice failed: cudaError \(101\)$"):
        CudaRuntime(lib).set_device(5)


def test_an_error_name_that_is_not_ascii_is_replaced_not_raised() -> None:
    """A garbled name is decoded with replacement characters: the CudaError is raised, never a
    UnicodeDecodeError from building it."""
    lib = FakeCudart()
    lib.cudaGetErrorName.body = lambda code: b"cudaErrorInvalid\xe9Device"
    with pytest.raises(CudaError) as caught:
        CudaRuntime(lib).set_device(5)
    assert str(caught.value) == "cudaSetDevice failed: cudaErrorInvalid\ufffdDevice (101)"


@pytest.mark.parametrize(
    ("function", "call", "action"),
    [
        ("cudaIpcOpenMemHandle", "cudaIpcOpenMemHandle", lambda cuda: cuda.ipc_open(IpcHandle(), 0)),
        ("cudaHostAlloc", "cudaHostAlloc", lambda cuda: cuda.host_alloc(64)),
    ],
)
def test_a_success_that_gives_no_pointer_is_an_error(
    function: str, call: str, action: Callable[[CudaRuntime], object]
) -> None:
    """A call that reports success but leaves its out-pointer unset is a CudaError (code -1), never
    a pointer the server would then read or write."""
    lib = FakeCudart()
    getattr(lib, function).body = lambda *args: 0  # success, nothing written
    with pytest.raises(CudaError) as caught:
        action(CudaRuntime(lib))
    assert (caught.value.call, caught.value.code) == (call, -1)
    assert str(caught.value) == f"{call} failed: a null pointer (-1)"


def test_a_success_that_writes_no_count_lists_no_device() -> None:
    """The count starts at zero: a runtime that does not write it gives no phantom GPU."""
    lib = FakeCudart(devices=3)
    lib.cudaGetDeviceCount.body = lambda ref: 0
    assert CudaRuntime(lib).device_count() == 0


# -- what the calls are given ---------------------------------------------------------------------


def test_ipc_handles_are_opened_with_lazy_peer_access_on_the_named_device() -> None:
    """cudaIpcMemLazyEnablePeerAccess (1), as Triton opens them, after selecting the device."""
    lib = FakeCudart(devices=2)
    raw, address = lib.export(64)
    calls = _record(lib, "cudaIpcOpenMemHandle")
    assert CudaRuntime(lib).ipc_open(IpcHandle.from_buffer_copy(raw), 1) == address
    assert [flags for _, _, flags in calls] == [1]
    assert lib.open == {address: 1}


def test_copies_pass_both_addresses_the_size_and_the_direction() -> None:
    """cudaMemcpy gets (destination, source, bytes, kind): device to host is kind 2, host to
    device kind 1, and neither address is lost on the way."""
    lib = FakeCudart(devices=2)
    calls = _record(lib, "cudaMemcpy", result=0)
    cuda = CudaRuntime(lib)
    host, device = 0x7F12_3456_7000, 0x7F00_0000_1000  # above 32 bits, as real pointers are
    cuda.copy_to_host(host, device, 48, 1)
    cuda.copy_to_device(device, host, 16, 0)
    got = [(dst.value, src.value, nbytes, kind) for dst, src, nbytes, kind in calls]
    assert got == [(host, device, 48, 2), (device, host, 16, 1)]


def test_pinned_buffers_are_allocated_with_the_default_flags() -> None:
    """cudaHostAllocDefault (0) and the size asked for; the pointer the runtime wrote comes back."""
    lib = FakeCudart()
    calls = _record(lib, "cudaHostAlloc")
    pointer = CudaRuntime(lib).host_alloc(100)
    assert [(nbytes, flags) for _, nbytes, flags in calls] == [(100, 0)]
    assert lib.pinned == {pointer: 100}


def test_a_handle_is_copied_from_the_clients_bytes_into_its_own_storage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The 64 bytes go into the structure itself (a copy to or from a null address would crash
    the server, so the copy is checked before it is made)."""
    real = ctypes.memmove
    seen: list[tuple[Any, Any, int]] = []

    def checked(dst: Any, src: Any, count: int) -> Any:
        seen.append((dst, src, count))
        if not dst or not src:
            raise AssertionError(f"memmove({dst!r}, {src!r}, {count})")
        return real(dst, src, count)

    monkeypatch.setattr(ctypes, "memmove", checked)
    raw = bytes(range(100, 100 + IPC_HANDLE_SIZE))
    handle = parse_ipc_handle(raw)
    assert bytes(memoryview(handle)) == raw
    assert seen == [(ctypes.addressof(handle), raw, IPC_HANDLE_SIZE)]


# -- finding the library --------------------------------------------------------------------------


def _site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: list[str]) -> Path:
    """sys.path is one site-packages folder holding `files` (under it), as the wheels install them
    (only it: wheels installed on this machine are not seen)."""
    site = tmp_path / "site"
    site.mkdir(parents=True)
    for file in files:
        (site / file).parent.mkdir(parents=True, exist_ok=True)
        (site / file).write_bytes(b"")
    monkeypatch.delitem(sys.modules, "nvidia", raising=False)
    monkeypatch.setattr(sys, "path", [str(site)])
    importlib.invalidate_caches()
    return site


def test_the_wheels_lib_folders_are_searched_newest_copy_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nvidia/cuda_runtime/lib, then cu13/lib, then cu12/lib; in each, the highest soname first;
    other libraries there are not taken."""
    site = _site(
        tmp_path,
        monkeypatch,
        [
            "nvidia/cuda_runtime/lib/libcudart.so.11.0",
            "nvidia/cuda_runtime/lib/libcudart.so.12",
            "nvidia/cuda_runtime/lib/libcublas.so.12",
            "nvidia/cu13/lib/libcudart.so.13",
            "nvidia/cu12/lib/libcudart.so.12",
            "nvidia/cu12/include/libcudart.so.12",  # not a lib folder
        ],
    )
    nvidia = site / "nvidia"
    assert cudart._wheel_paths() == [
        nvidia / "cuda_runtime/lib/libcudart.so.12",
        nvidia / "cuda_runtime/lib/libcudart.so.11.0",
        nvidia / "cu13/lib/libcudart.so.13",
        nvidia / "cu12/lib/libcudart.so.12",
    ]


def test_no_wheel_or_a_plain_nvidia_module_gives_no_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the nvidia namespace package, or with a module of that name that is no package,
    there is nothing to try."""
    _site(tmp_path / "none", monkeypatch, [])
    assert cudart._wheel_paths() == []
    _site(tmp_path, monkeypatch, ["nvidia.py"])
    assert cudart._wheel_paths() == []


def test_load_cudart_tries_the_sonames_in_order_then_the_wheels_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Missing sonames and a library that is no CUDA runtime are skipped; the wheel's file is
    opened by its path."""
    site = _site(tmp_path, monkeypatch, ["nvidia/cuda_runtime/lib/libcudart.so.12"])
    wheel = str(site / "nvidia/cuda_runtime/lib/libcudart.so.12")
    lib = FakeCudart()
    tried: list[str] = []

    def opener(name: str) -> object:
        tried.append(name)
        if name == wheel:
            return lib
        if name == "libcudart.so.12":
            return SimpleNamespace()  # loads, but has none of the calls
        raise OSError(f"{name}: cannot open shared object file")

    cuda = load_cudart(opener)
    assert tried == [*SONAMES, wheel]
    cuda.set_device(0)
    assert lib.cudaSetDevice.calls == 1  # the runtime is over the wheel's library


def test_load_cudart_says_what_it_tried_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CudaUnavailable names the first four places tried, each with its loader error."""
    _site(tmp_path, monkeypatch, ["nvidia/cu12/lib/libcudart.so.12"])

    def opener(name: str) -> object:
        raise OSError("not found")

    with pytest.raises(CudaUnavailable) as caught:
        load_cudart(opener)
    tried = "; ".join(f"{name}: not found" for name in SONAMES)
    assert str(caught.value) == f"no CUDA runtime library could be loaded ({tried})"
