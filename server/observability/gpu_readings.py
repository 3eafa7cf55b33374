"""NVML's readings of the GPUs this process can see, for Triton's GPU gauges (gpu_usage.py polls
them on a thread of its own).

NVML is NVIDIA's management library (the driver's libnvidia-ml.so.1), read through its Python
binding `pynvml` (PyPI nvidia-ml-py, in the gpu extras). Without the driver (every CPU machine) the
binding is not imported at all: its import is ~25-30 ms of a server start, the failed load of the
library 0.2 ms.

Which GPUs: those CUDA_VISIBLE_DEVICES lets this process see (all where it is unset), as Triton
shows the GPUs it can use. Its indices are NVML's (PCI bus order), which are CUDA's under
CUDA_DEVICE_ORDER=PCI_BUS_ID and on a machine of one GPU model; a `GPU-` UUID (or a unique prefix
of one) names its GPU exactly; a GPU NVML cannot name keeps its index (shows nothing: the next one
is not read in its place; a tester, session 62). A `MIG-` entry shows nothing (its parent GPU is
not looked up).

Readings: a reading a GPU refuses (power on some boards, utilisation on a MIG-partitioned GPU, a
lost GPU), with NVML's error or any other (a ctypes error), leaves that series off for that GPU
(absent from the page until it reads again), said in one line a GPU, and again when it reads
again. Memory used is NVML's v2 reading where the driver has it (allocated, not the driver's
reservation: as nvidia-smi and DCGM), else v1's (decided per GPU by the driver's own "no such
function" answer). The energy is counted from the first reading as Triton counts it, each
reading's increase added: a counter that goes back (a driver reload, a GPU reset) adds nothing and
counting goes on from there.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from server.whole_numbers import whole_number

log = logging.getLogger(__name__)

UTILIZATION = "nv_gpu_utilization"
MEMORY_TOTAL = "nv_gpu_memory_total_bytes"
MEMORY_USED = "nv_gpu_memory_used_bytes"
POWER_USAGE = "nv_gpu_power_usage"
POWER_LIMIT = "nv_gpu_power_limit"
ENERGY = "nv_energy_consumption"
DRIVER_LIBRARY = "libnvidia-ml.so.1"  # the name the binding loads
BINDING = "pynvml"  # PyPI nvidia-ml-py: NVIDIA's own binding (the PyPI package `pynvml` wraps it)
_MILLI = 1000.0  # NVML gives power in milliwatts and energy in millijoules
_PERCENT = 100.0
Sample = tuple[str, Mapping[str, str], float]


def visible_indices(value: str | None, uuids: Sequence[str | None]) -> list[int]:
    """The NVML indices of the GPUs (`uuids`, in NVML's order; None: one NVML cannot name) that
    CUDA_VISIBLE_DEVICES (`value`; None: unset) lets this process see. As CUDA reads it: a comma
    list of indices and UUIDs, read up to its first invalid entry (an index out of range, a UUID
    prefix that names no GPU or several, a repeat, anything else); set but empty hides every GPU.
    `MIG-` entries are passed over."""
    if value is None:
        return list(range(len(uuids)))
    chosen: list[int] = []
    for raw in value.split(","):
        entry = raw.strip()
        if entry.startswith("MIG-"):
            continue
        index = whole_number(entry, len(uuids) - 1) if uuids else None
        named = [k for k, uuid in enumerate(uuids) if uuid is not None and uuid.startswith(entry)]
        if index is None and entry.startswith("GPU-") and len(named) == 1:
            index = named[0]
        if index is None or index in chosen:
            break
        chosen.append(index)
    return chosen


def driver_library_loads(library: str = DRIVER_LIBRARY) -> bool:
    """Whether NVML's library (the driver's) loads here."""
    try:
        ctypes.CDLL(library)
    except OSError:
        return False
    return True


def load_binding(
    import_module: Callable[[str], Any] = importlib.import_module,
    driver_loads: Callable[[], bool] | None = None,
) -> tuple[Any, str]:
    """NVML's binding, started (nvmlInit), and ""; or None and why not. `driver_loads`: whether
    the library loads (None: driver_library_loads, looked up at the call)."""
    if not (driver_loads or driver_library_loads)():
        return None, f"{DRIVER_LIBRARY} does not load: no NVIDIA driver here"
    try:
        nvml = import_module(BINDING)
    except ImportError:
        return None, "nvidia-ml-py is not installed (the gpu extras install it)"
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as err:
        return None, f"NVML did not start: {err}"
    return nvml, ""


def _text(value: str | bytes) -> str:
    """NVML's strings: bytes from older bindings, str from newer ones."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


@dataclass
class Gpu:
    """One GPU shown: NVML's handle, its UUID (the series' label), its name (for the log), and its
    energy counted so far (millijoules) from the last reading NVML gave."""

    handle: Any
    uuid: str
    name: str
    energy_mj: int = 0
    last_mj: int | None = None
    left_off: set[str] = field(default_factory=set)  # series left off since they last read
    memory_v1: bool = False  # the driver has no v2 memory reading for it

    def count_energy(self, now_mj: int) -> float:
        """Joules counted, `now_mj` (NVML's total since the driver loaded) taken in."""
        if self.last_mj is not None and now_mj >= self.last_mj:
            self.energy_mj += now_mj - self.last_mj
        self.last_mj = now_mj  # the first reading, or the counter gone back: counted from here
        return self.energy_mj / _MILLI


def _said(err: Exception) -> str:
    """An error as a log line says it (its own text may fail: a binding's error is any object)."""
    try:
        return str(err) or type(err).__name__
    except Exception:
        return type(err).__name__


def gpus_of(nvml: Any) -> list[Gpu | None]:
    """Every GPU NVML lists, in its order; None for one it cannot name (said)."""
    gpus: list[Gpu | None] = []
    for index in range(int(nvml.nvmlDeviceGetCount())):
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid, name = _text(nvml.nvmlDeviceGetUUID(handle)), _text(nvml.nvmlDeviceGetName(handle))
            gpus.append(Gpu(handle, uuid, name))
        except Exception as err:  # NVML's error or the binding's own: that GPU alone
            log.info("GPU metrics: NVML's GPU %d is left off: %s", index, _said(err))
            gpus.append(None)
    return gpus


class GpuReadings:
    """The GPUs NVML shows this process and their six series, read when asked (not thread-safe:
    one poller reads them)."""

    def __init__(self, nvml: Any, gpus: Sequence[Gpu]) -> None:
        self._nvml = nvml
        self.gpus = tuple(gpus)
        self._memory_v2 = getattr(nvml, "nvmlMemory_v2", None)  # bindings before R510's lack it
        self._no_v2 = {
            getattr(nvml, "NVML_ERROR_FUNCTION_NOT_FOUND", 13),
            getattr(nvml, "NVML_ERROR_ARGUMENT_VERSION_MISMATCH", 25),
        }
        for gpu in self.gpus:  # energy from the server's start: its first reading, now if it can
            with contextlib.suppress(Exception):
                gpu.count_energy(int(nvml.nvmlDeviceGetTotalEnergyConsumption(gpu.handle)))

    def _memory(self, gpu: Gpu) -> Any:
        """NVML's v2 memory reading where the driver has it, else v1's: decided per GPU, and only
        by the driver's own answer (a lost GPU's error had put every GPU on v1; a tester, s62)."""
        if self._memory_v2 is not None and not gpu.memory_v1:
            try:
                return self._nvml.nvmlDeviceGetMemoryInfo(gpu.handle, version=self._memory_v2)
            except self._nvml.NVMLError as err:
                if getattr(err, "value", None) not in self._no_v2:
                    raise
                gpu.memory_v1 = True  # this driver has no v2 call (or not this version of it)
        return self._nvml.nvmlDeviceGetMemoryInfo(gpu.handle)

    def _readings(self, gpu: Gpu) -> list[tuple[str, Callable[[], float]]]:
        nvml, handle = self._nvml, gpu.handle
        memory: list[Any] = []  # one call for both memory series

        def used(part: str) -> float:
            if not memory:
                memory.append(self._memory(gpu))
            return float(getattr(memory[0], part))

        return [
            (UTILIZATION, lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu / _PERCENT),
            (MEMORY_TOTAL, lambda: used("total")),
            (MEMORY_USED, lambda: used("used")),
            (POWER_USAGE, lambda: nvml.nvmlDeviceGetPowerUsage(handle) / _MILLI),
            (POWER_LIMIT, lambda: nvml.nvmlDeviceGetPowerManagementLimit(handle) / _MILLI),
            (ENERGY, lambda: gpu.count_energy(int(nvml.nvmlDeviceGetTotalEnergyConsumption(handle)))),
        ]

    def read(self) -> list[Sample]:
        """Each GPU's series now; those it refuses left off, said once a GPU and series."""
        samples: list[Sample] = []
        for gpu in self.gpus:
            labels = {"gpu_uuid": gpu.uuid}
            refused: list[str] = []
            back: list[str] = []
            for name, reading in self._readings(gpu):
                try:
                    samples.append((name, labels, float(reading())))
                except Exception as err:  # NVML's refusal, or the binding's own failure
                    if name not in gpu.left_off:
                        gpu.left_off.add(name)
                        refused.append(f"{name} ({_said(err)})")
                    continue
                if name in gpu.left_off:  # read again: a later failure is said again
                    gpu.left_off.discard(name)
                    back.append(name)
            if refused:
                log.info("GPU metrics: left off for %s (%s): %s", gpu.uuid, gpu.name, ", ".join(refused))
            if back:
                log.info("GPU metrics: read again for %s (%s): %s", gpu.uuid, gpu.name, ", ".join(back))
        return samples

    def shutdown(self) -> None:
        """Let NVML go (nvmlShutdown; its starts are counted)."""
        try:
            self._nvml.nvmlShutdown()
        except Exception as err:
            log.debug("GPU metrics: nvmlShutdown failed: %s", _said(err))


def open_readings(
    cuda_visible: str | None, load: Callable[[], tuple[Any, str]] = load_binding
) -> tuple[GpuReadings | None, str]:
    """The readings of the GPUs CUDA_VISIBLE_DEVICES (`cuda_visible`) lets this process see, and
    "", or None and why not (NVML let go)."""
    nvml, why = load()
    if nvml is None:
        return None, why
    try:
        every = gpus_of(nvml)
    except Exception as err:
        every, why = [], f"NVML could not list the GPUs: {_said(err)}"
    chosen = visible_indices(cuda_visible, [gpu.uuid if gpu is not None else None for gpu in every])
    shown = [gpu for gpu in (every[k] for k in chosen) if gpu is not None]
    if not shown:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()
        return None, why or f"none of {len(every)} GPUs visible: CUDA_VISIBLE_DEVICES={cuda_visible!r}"
    return GpuReadings(nvml, shown), ""
