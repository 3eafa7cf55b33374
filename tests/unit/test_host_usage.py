"""Triton's CPU gauges (server/observability/host_usage.py) from /proc texts written here: the
utilisation between two readings with idle and iowait as idle, memory used as MemTotal less
MemAvailable, each scrape's interval starting at the one before, and gauges left off where /proc
gives nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.observability.host_usage import (
    CPU_UTILIZATION,
    MEMORY_TOTAL,
    MEMORY_USED,
    CpuTimes,
    HostUsage,
    cpu_times,
    memory_bytes,
    utilization,
)

# user nice system idle iowait irq softirq steal guest guest_nice
STAT = "cpu  100 20 30 800 50 5 5 0 40 0\ncpu0 50 10 15 400 25 2 3 0 20 0\nintr 12345\n"
MEMINFO = "MemTotal:       16000 kB\nMemFree:         1000 kB\nMemAvailable:    6000 kB\nBuffers: 1 kB\n"


def test_cpu_times_reads_the_all_cpus_line_with_iowait_as_idle_and_guest_left_out() -> None:
    # guest (40) is already within user: counting it twice would make an idle machine look busy.
    assert cpu_times(STAT) == CpuTimes(idle=850, total=1010)
    assert cpu_times("cpu0 1 2 3 4\n") is None  # one CPU's line alone is not the machine


def test_utilization_is_the_busy_share_between_two_readings() -> None:
    assert utilization(CpuTimes(850, 1010), CpuTimes(880, 1110)) == pytest.approx(0.7)
    assert utilization(CpuTimes(850, 1010), CpuTimes(950, 1110)) == 0.0  # all idle
    assert utilization(CpuTimes(850, 1010), CpuTimes(850, 1110)) == 1.0  # all busy
    assert utilization(CpuTimes(850, 1010), CpuTimes(850, 1010)) == 0.0  # no tick passed


def test_memory_is_total_and_total_less_available_in_bytes() -> None:
    assert memory_bytes(MEMINFO) == (16000 * 1024, 10000 * 1024)
    assert memory_bytes("MemTotal: 16000 kB\n") is None  # no MemAvailable (a kernel before 3.14)


class FakeProc:
    """/proc's two files, changed between readings as a test says."""

    def __init__(self) -> None:
        self.texts: dict[str, str | None] = {"stat": STAT, "meminfo": MEMINFO}

    def read(self, path: Path) -> str | None:
        return self.texts[path.name]

    def ticks(self, busy: int, idle: int) -> None:
        self.texts["stat"] = f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\n"


def gauges(usage: HostUsage) -> dict[str, float]:
    return {name: value for name, labels, value in usage.gauge_values() if not labels}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_utilisation_covers_the_last_two_seconds_and_the_first_scrapes_the_time_since_the_start() -> None:
    proc, clock = FakeProc(), Clock()
    proc.ticks(busy=100, idle=900)
    usage = HostUsage(read=proc.read, clock=clock)  # the server starts
    clock.now = 1.0
    proc.ticks(busy=130, idle=970)  # 30 busy of 100 since the start: the only reading
    assert gauges(usage) == {
        CPU_UTILIZATION: pytest.approx(0.3),
        MEMORY_TOTAL: 16000 * 1024,
        MEMORY_USED: 10000 * 1024,
    }
    clock.now = 3.0
    proc.ticks(busy=220, idle=980)  # from the reading at 1.0 (the newest 2 s old): 90 busy of 100
    assert gauges(usage)[CPU_UTILIZATION] == pytest.approx(0.9)


def test_two_scrapes_at_once_read_the_same_window_not_an_empty_one() -> None:
    # Measured from the previous scrape, the second of two scrapers read 0.0 on a busy machine (no
    # clock tick between them) and shortened the first's window (a tester, session 58).
    proc, clock = FakeProc(), Clock()
    proc.ticks(busy=0, idle=0)
    usage = HostUsage(read=proc.read, clock=clock)
    clock.now = 10.0
    proc.ticks(busy=1000, idle=0)
    first = gauges(usage)[CPU_UTILIZATION]
    second = gauges(usage)[CPU_UTILIZATION]  # the same moment, the same ticks
    assert first == second == 1.0


def test_what_proc_cannot_give_is_left_off_the_page() -> None:
    proc = FakeProc()
    proc.texts = {"stat": None, "meminfo": None}
    assert gauges(HostUsage(read=proc.read)) == {}
    proc.texts = {"stat": STAT, "meminfo": None}
    usage = HostUsage(read=proc.read)
    assert set(gauges(usage)) == {CPU_UTILIZATION}


def test_a_stat_that_appears_later_starts_its_interval_at_that_scrape() -> None:
    proc = FakeProc()
    proc.texts["stat"] = None
    usage = HostUsage(read=proc.read)
    proc.ticks(busy=100, idle=900)
    assert CPU_UTILIZATION not in gauges(usage)  # nothing to measure from yet
    proc.ticks(busy=150, idle=950)
    assert gauges(usage)[CPU_UTILIZATION] == pytest.approx(0.5)


def test_this_machines_proc_reads() -> None:
    if not Path("/proc/stat").exists():
        pytest.skip("no /proc here")
    values = gauges(HostUsage())
    assert 0.0 <= values[CPU_UTILIZATION] <= 1.0
    assert 0 < values[MEMORY_USED] <= values[MEMORY_TOTAL]


def test_edges_of_the_readings() -> None:
    """Mutants that survived session 58's first tests: a short cpu line, one tick, an idle count
    that went back, all memory available, and the readings kept bounded."""
    assert cpu_times("cpu  10 0 0 90\n") == CpuTimes(idle=90, total=100)  # no iowait field
    assert utilization(CpuTimes(0, 0), CpuTimes(0, 1)) == 1.0  # one busy tick
    assert utilization(CpuTimes(10, 100), CpuTimes(5, 110)) == 1.0  # idle went back: capped
    assert memory_bytes("MemTotal: 100 kB\nMemAvailable: 100 kB\n") == (102400, 0)
    proc, clock = FakeProc(), Clock()
    usage = HostUsage(read=proc.read, clock=clock)
    for _ in range(200):  # scrapes at one moment: no reading old enough to let go
        gauges(usage)
    assert len(usage._readings) <= 64
