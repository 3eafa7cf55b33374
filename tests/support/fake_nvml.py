"""A stand-in for libnvidia-ml.so.1 (NVML), for the GPU gauges' tests on machines without a GPU.

NVIDIA's own binding (pynvml, PyPI nvidia-ml-py) calls it exactly as it calls the driver's library:
ctypes arguments in, structures filled through pointers, NVML's return codes out. `install` puts
it where the binding looks for its loaded library, so server/observability/gpu_usage.py runs
through the real binding's calls and conversions (milliwatts, millijoules, structures, bytes).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from typing import Any

import pytest

SUCCESS = 0
NOT_SUPPORTED = 3  # NVML_ERROR_NOT_SUPPORTED
DRIVER_NOT_LOADED = 9  # NVML_ERROR_DRIVER_NOT_LOADED
FUNCTION_NOT_FOUND = 13  # NVML_ERROR_FUNCTION_NOT_FOUND: a driver older than the call
GPU_IS_LOST = 15  # NVML_ERROR_GPU_IS_LOST


@dataclass
class FakeGpu:
    """One GPU's readings, in NVML's units."""

    uuid: str
    name: str = "NVIDIA H200"
    utilization_percent: int = 0
    memory_total: int = 150_000_000_000
    memory_used: int = 600_000_000  # allocated (v2's "used"); v1's "used" adds the reservation
    memory_reserved: int = 400_000_000
    power_mw: int = 75_000
    limit_mw: int = 700_000
    energy_mj: int = 1_000_000_000  # since the driver loaded: long before the server started
    refuses: set[str] = field(default_factory=set)  # NVML functions that answer NOT_SUPPORTED
    lost: bool = False  # every call about it answers GPU_IS_LOST (fallen off the bus)


def _handle_index(handle: Any) -> int:
    return int(ctypes.cast(handle, ctypes.c_void_p).value or 0) - 1


class FakeNvml:
    """The library: attributes named as NVML's C functions, answering for `gpus`."""

    def __init__(self, gpus: list[FakeGpu], init_code: int = SUCCESS) -> None:
        self.gpus = gpus
        self.init_code = init_code
        self.count_code = SUCCESS  # what nvmlDeviceGetCount answers
        self.memory_v2 = True  # whether the driver has nvmlDeviceGetMemoryInfo_v2
        self.memory_v2_code = FUNCTION_NOT_FOUND  # what it answers where it has not
        self.memory_v2_calls = 0
        self.calls: dict[str, Any] = {}  # C function -> a hook called first (a test's: block, raise)
        self.shutdown_code = SUCCESS
        self.inits = 0
        self.shutdowns = 0

    def _gpu(self, handle: Any, function: str) -> FakeGpu | int:
        index = _handle_index(handle)
        if not 0 <= index < len(self.gpus):
            return 2  # NVML_ERROR_INVALID_ARGUMENT
        gpu = self.gpus[index]
        if gpu.lost:
            return GPU_IS_LOST
        return NOT_SUPPORTED if function in gpu.refuses else gpu

    def nvmlInitWithFlags(self, flags: Any) -> int:
        self.inits += self.init_code == SUCCESS
        return self.init_code

    def nvmlShutdown(self) -> int:
        self.shutdowns += 1
        return self.shutdown_code

    def nvmlDeviceGetCount_v2(self, count: Any) -> int:
        count._obj.value = len(self.gpus)
        return self.count_code

    def nvmlDeviceGetHandleByIndex_v2(self, index: Any, device: Any) -> int:
        if not 0 <= index.value < len(self.gpus):
            return 2
        ctypes.c_size_t.from_address(ctypes.addressof(device._obj)).value = index.value + 1
        return SUCCESS

    def nvmlDeviceGetUUID(self, handle: Any, buffer: Any, size: Any) -> int:
        return self._text(handle, "nvmlDeviceGetUUID", buffer, lambda gpu: gpu.uuid)

    def nvmlDeviceGetName(self, handle: Any, buffer: Any, size: Any) -> int:
        return self._text(handle, "nvmlDeviceGetName", buffer, lambda gpu: gpu.name)

    def _text(self, handle: Any, function: str, buffer: Any, read: Any) -> int:
        gpu = self._gpu(handle, function)
        if isinstance(gpu, int):
            return gpu
        buffer.value = read(gpu).encode()
        return SUCCESS

    def _fill(self, handle: Any, function: str, target: Any, **values: Any) -> int:
        hook = self.calls.get(function)
        if hook is not None:
            hook()  # may block, or raise as a broken binding would
        gpu = self._gpu(handle, function)
        if isinstance(gpu, int):
            return gpu
        for name, read in values.items():
            setattr(target._obj, name, read(gpu))
        return SUCCESS

    def nvmlDeviceGetUtilizationRates(self, handle: Any, rates: Any) -> int:
        function = "nvmlDeviceGetUtilizationRates"
        return self._fill(handle, function, rates, gpu=lambda g: g.utilization_percent, memory=lambda g: 0)

    def nvmlDeviceGetMemoryInfo(self, handle: Any, memory: Any) -> int:
        return self._fill(
            handle,
            "nvmlDeviceGetMemoryInfo",
            memory,
            total=lambda g: g.memory_total,
            used=lambda g: g.memory_used + g.memory_reserved,
            free=lambda g: g.memory_total - g.memory_used - g.memory_reserved,
        )

    def nvmlDeviceGetMemoryInfo_v2(self, handle: Any, memory: Any) -> int:
        self.memory_v2_calls += 1
        if not self.memory_v2:
            return self.memory_v2_code
        return self._fill(
            handle,
            "nvmlDeviceGetMemoryInfo",
            memory,
            total=lambda g: g.memory_total,
            reserved=lambda g: g.memory_reserved,
            used=lambda g: g.memory_used,
            free=lambda g: g.memory_total - g.memory_used - g.memory_reserved,
        )

    def nvmlDeviceGetPowerUsage(self, handle: Any, watts: Any) -> int:
        return self._fill(handle, "nvmlDeviceGetPowerUsage", watts, value=lambda g: g.power_mw)

    def nvmlDeviceGetPowerManagementLimit(self, handle: Any, limit: Any) -> int:
        return self._fill(handle, "nvmlDeviceGetPowerManagementLimit", limit, value=lambda g: g.limit_mw)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any, energy: Any) -> int:
        return self._fill(handle, "nvmlDeviceGetTotalEnergyConsumption", energy, value=lambda g: g.energy_mj)


def install(monkeypatch: pytest.MonkeyPatch, lib: FakeNvml) -> None:
    """The real binding (the test extra installs it) answers from `lib` until the test ends."""
    import pynvml

    from server.observability import gpu_readings

    monkeypatch.setattr(gpu_readings, "driver_library_loads", lambda: True)  # this one "loads"
    monkeypatch.setattr(pynvml, "nvmlLib", lib)
    monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer_cache", {})
    monkeypatch.setattr(pynvml, "_nvmlLib_refcount", 0)
