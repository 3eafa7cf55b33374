"""The GPUs' use, memory and power as Triton's GPU gauges (`nv_gpu_utilization`,
`nv_gpu_memory_total_bytes`, `nv_gpu_memory_used_bytes`, `nv_gpu_power_usage`,
`nv_gpu_power_limit`, and the counter `nv_energy_consumption`), one series per GPU labelled
`gpu_uuid` as Triton labels them, so a Triton dashboard's GPU panels and perf_analyzer's
`--collect-metrics` read this server's GPUs too.

As Triton polls DCGM every metrics interval (2 s) on a thread of its own, a Periodic
(server/periodic.py) here reads NVML (gpu_readings.py) every POLL_S and a scrape shows the last
poll: a scrape never waits on the GPU's driver, nor does the server's start (NVML started on that
thread, at its first call). Before: read at each scrape, a
3 s NVML call made every scrape of the page 3 s, and an 8 s nvmlInit the server's start 8 s (a
tester, session 62). Where the binding is not installed, or NVML cannot start (no driver: every
CPU machine), the gauges are left off the page, as Triton leaves them off without a GPU, and the
log says why once (INFO where onnxruntime has CUDA, else DEBUG). Each worker of `--workers` shows
the same GPUs, its energy counted from its own start.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from server.backends.gpu_devices import CUDA_PROVIDER
from server.observability.gpu_readings import (
    ENERGY,
    MEMORY_TOTAL,
    MEMORY_USED,
    POWER_LIMIT,
    POWER_USAGE,
    UTILIZATION,
    GpuReadings,
    Sample,
    load_binding,
    open_readings,
)
from server.periodic import Periodic

log = logging.getLogger(__name__)

METRICS = {  # Triton's HELP texts
    UTILIZATION: ("gauge", "GPU utilization rate [0.0 - 1.0)"),
    MEMORY_TOTAL: ("gauge", "GPU total memory, in bytes"),
    MEMORY_USED: ("gauge", "GPU used memory, in bytes"),
    POWER_USAGE: ("gauge", "GPU power usage in watts"),
    POWER_LIMIT: ("gauge", "GPU power management limit in watts"),
    ENERGY: ("counter", "GPU energy consumption in joules since the server started"),
}
POLL_S = 2.0  # Triton's default --metrics-interval-ms
_JOIN_S = 1.0  # a stop waits this long for a poll stuck in the driver (the thread is a daemon)


class GpuUsage:
    """The gauge source (server/observability/metrics.py): `start` begins the polls (a Periodic,
    server/periodic.py: NVML started at its first call), `close` ends them and lets NVML go;
    `gauge_values` is the last poll's series."""

    def __init__(
        self,
        providers: Sequence[str],
        environ: Mapping[str, str] | None = None,
        load: Callable[[], tuple[Any, str]] = load_binding,
        poll_s: float = POLL_S,
    ) -> None:
        self._cuda_visible = (os.environ if environ is None else environ).get("CUDA_VISIBLE_DEVICES")
        self._gpu_runtime = CUDA_PROVIDER in providers  # GPUs expected: why there are none is INFO
        self._load, self._poll_s = load, poll_s
        self._lock = threading.Lock()
        self._polled = threading.Condition(self._lock)
        self._polls = 0
        self._samples: list[Sample] = []
        self._readings: GpuReadings | None = None
        self._stop = threading.Event()
        self._opened = False  # NVML asked for (once)
        self._periodic: Periodic | None = None
        self._failing = False

    def open(self) -> bool:
        """Start NVML and choose the GPUs (the thread does, first); whether any is shown."""
        self._opened = True
        try:
            readings, why = open_readings(self._cuda_visible, self._load)
        except Exception as err:  # an optional page section never stops the server
            readings, why = None, f"NVML failed: {type(err).__name__}: {err}"
        if readings is None:
            log.log(logging.INFO if self._gpu_runtime else logging.DEBUG, "GPU metrics: none (%s)", why)
            return False
        if self._stop.is_set():  # stopped while NVML started: nothing said, nothing shown
            readings.shutdown()
            return False
        shown = ", ".join(f"{gpu.uuid} ({gpu.name})" for gpu in readings.gpus)
        log.info("GPU metrics (nv_gpu_*) for %s", shown)
        with self._lock:
            self._readings = readings
        return True

    def poll(self) -> None:
        """Read every GPU's series now; they are what scrapes show until the next poll."""
        with self._lock:
            readings = self._readings
        if readings is None:
            return
        samples = readings.read()
        with self._lock:
            if self._readings is not None:  # not closed meanwhile
                self._samples = samples
            self._polls += 1
            self._polled.notify_all()

    def wait_polls(self, count: int, timeout_s: float) -> bool:
        """Whether `count` polls have been made, waited for up to `timeout_s`."""
        with self._polled:
            return self._polled.wait_for(lambda: self._polls >= count, timeout_s)

    def start(self) -> None:
        """Open, then poll, every POLL_S on a daemon thread named gpu-metrics, until `close`."""
        if self._periodic is None and not self._stop.is_set():
            self._periodic = Periodic(self._tick, self._poll_s, "gpu-metrics")

    def _tick(self) -> None:
        """The thread's call: NVML started at the first, then a poll; after a stop, NVML let go
        by the thread that used it, after its last call (a stop that gave up waiting on it)."""
        if not self._opened:
            self.open()
        elif not self._stop.is_set():
            self._guarded_poll()
        if self._stop.is_set():
            self._let_go()

    def _guarded_poll(self) -> None:
        """A poll that fails shows no GPU series until one succeeds (said once): the thread goes on,
        where a failure had ended it silently and left the last values on the page (a tester, s62)."""
        try:
            self.poll()
        except Exception:
            with self._lock:
                failed, self._samples = not self._failing, []
                self._failing = True
            if failed:
                log.exception("GPU metrics: a poll failed; no GPU series until one succeeds")
            return
        with self._lock:
            self._failing = False

    def gauge_values(self) -> list[Sample]:
        with self._lock:
            return list(self._samples)

    def close(self) -> None:
        """End the polls and let NVML go; later scrapes show no GPU series. A poll stuck in the
        driver is waited for _JOIN_S at most (NVML is then let go by the thread, if it returns)."""
        if self._stop.is_set():
            return  # closed already: NVML let go, or left to a poll stuck in it
        self._stop.set()
        if self._periodic is not None:
            self._periodic.close(_JOIN_S)
            if self._periodic.is_alive():
                log.warning("GPU metrics: NVML did not answer within %.0f s of the stop: left to it", _JOIN_S)
                return
        self._let_go()

    def _let_go(self) -> None:
        with self._lock:
            readings, self._readings = self._readings, None
            self._samples = []
        if readings is not None:
            readings.shutdown()
