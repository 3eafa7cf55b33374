"""The machine's CPU use and memory as Triton's CPU gauges (`nv_cpu_utilization`,
`nv_cpu_memory_total_bytes`, `nv_cpu_memory_used_bytes`), so a Triton dashboard's host panels
show this server's machine too.

As Triton, read from Linux's /proc: the utilisation is the share of the machine's CPU time not idle
(idle and iowait count as idle) over the last WINDOW_S at least (Triton's metrics interval, 2 s):
from the newest reading that old, readings kept from earlier scrapes (the first scrapes: since the
server started). Measured from the previous scrape instead, two scrapers at once had read 0.0 on a
busy machine (no clock tick between them) and shortened each other's windows (a tester, session
58). Memory used is MemTotal less MemAvailable. Where /proc is not there (another OS) the gauges are
left off the page. Each worker of `--workers` shows the same machine-wide figures.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

CPU_UTILIZATION = "nv_cpu_utilization"
MEMORY_TOTAL = "nv_cpu_memory_total_bytes"
MEMORY_USED = "nv_cpu_memory_used_bytes"
METRICS = {
    CPU_UTILIZATION: (
        "gauge",
        "CPU utilization rate [0.0 - 1.0]: the machine's CPU time not idle since the previous scrape",
    ),
    MEMORY_TOTAL: ("gauge", "CPU total memory (RAM), in bytes"),
    MEMORY_USED: ("gauge", "CPU used memory (RAM), in bytes: MemTotal less MemAvailable"),
}
WINDOW_S = 2.0  # the utilisation covers at least this long, where the server has run so long
_KEPT = 64  # readings kept at most (scrapes more often than WINDOW_S / _KEPT share a base)
_IDLE_FIELDS = (3, 4)  # /proc/stat's cpu line: user nice system idle iowait irq softirq steal ...
_COUNTED_FIELDS = 8  # guest and guest_nice are already in user and nice


@dataclass(frozen=True)
class CpuTimes:
    """The machine's CPU time in clock ticks since boot: idle (with iowait) and in all."""

    idle: int
    total: int


def cpu_times(stat: str) -> CpuTimes | None:
    """The first `cpu ` line of /proc/stat's text (all CPUs together); None if there is none."""
    for line in stat.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            ticks = [int(v) for v in fields[1 : 1 + _COUNTED_FIELDS]]
            idle = sum(ticks[i] for i in _IDLE_FIELDS if i < len(ticks))
            return CpuTimes(idle, sum(ticks))
    return None


def utilization(before: CpuTimes, now: CpuTimes) -> float:
    """The share of CPU time not idle between two readings, 0.0 to 1.0 (0.0 where no tick passed)."""
    total = now.total - before.total
    if total <= 0:
        return 0.0
    busy = total - (now.idle - before.idle)
    return min(1.0, max(0.0, busy / total))


def memory_bytes(meminfo: str) -> tuple[int, int] | None:
    """(total, used) bytes from /proc/meminfo's text: MemTotal, and MemTotal less MemAvailable."""
    kib: dict[str, int] = {}
    for line in meminfo.splitlines():
        key, _, rest = line.partition(":")
        if key in ("MemTotal", "MemAvailable"):
            kib[key] = int(rest.split()[0])
    if len(kib) < 2:
        return None
    total = kib["MemTotal"] * 1024
    return total, max(0, total - kib["MemAvailable"] * 1024)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


class HostUsage:
    """The three gauges (a gauge source: server/observability/metrics.py), the utilisation over the
    last WINDOW_S at least. Scrapes may come on several threads at once: a lock guards the readings."""

    def __init__(
        self,
        read: Callable[[Path], str | None] = _read,
        proc: Path = Path("/proc"),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read, self._clock = read, clock
        self._stat, self._meminfo = proc / "stat", proc / "meminfo"
        self._lock = threading.Lock()
        self._readings: deque[tuple[float, CpuTimes]] = deque(maxlen=_KEPT)
        self._keep(self._cpu())  # the first scrapes' window starts with the server

    def _keep(self, times: CpuTimes | None) -> None:
        if times is not None:
            self._readings.append((self._clock(), times))

    def _base(self, now: float) -> CpuTimes:
        """The newest reading at least WINDOW_S old, else the oldest; older ones let go."""
        while len(self._readings) > 1 and self._readings[1][0] <= now - WINDOW_S:
            self._readings.popleft()
        return self._readings[0][1]

    def _cpu(self) -> CpuTimes | None:
        text = self._read(self._stat)
        return None if text is None else cpu_times(text)

    def gauge_values(self) -> Iterator[tuple[str, Mapping[str, str], float]]:
        """Triton's CPU gauges now; those /proc cannot give are left off."""
        with self._lock:
            now, at = self._cpu(), self._clock()
            before = self._base(at) if now is not None and self._readings else None
            self._keep(now)
        if now is not None and before is not None:
            yield CPU_UTILIZATION, {}, utilization(before, now)
        text = self._read(self._meminfo)
        memory = None if text is None else memory_bytes(text)
        if memory is not None:
            yield MEMORY_TOTAL, {}, float(memory[0])
            yield MEMORY_USED, {}, float(memory[1])
