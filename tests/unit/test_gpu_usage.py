"""Triton's GPU gauges as a gauge source (server/observability/gpu_usage.py): NVML read on a thread
of its own every poll, a scrape showing the last poll without waiting on the driver (a poll stuck
in NVML does not hold a scrape, nor does NVML's start hold the server's), nothing (said why, at
INFO only where GPUs are expected) where NVML gives nothing or fails, and NVML let go once at close;
a constructed source that is never started never starts NVML."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from server.observability import gpu_usage
from server.observability.gpu_readings import UTILIZATION
from server.observability.gpu_usage import GpuUsage
from server.observability.metrics import Metrics
from tests.support.fake_nvml import DRIVER_NOT_LOADED, FakeGpu, FakeNvml, install

CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]
UUIDS = ["GPU-aaaa-1111", "GPU-bbbb-2222"]
BOUND_S = 30.0


@pytest.fixture
def lib(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    fake = FakeNvml([FakeGpu(uuid) for uuid in UUIDS])
    install(monkeypatch, fake)
    return fake


def names(usage: GpuUsage) -> set[tuple[str, str]]:
    return {(name, labels["gpu_uuid"]) for name, labels, _ in usage.gauge_values()}


def test_a_poll_is_what_scrapes_show_until_the_next(lib: FakeNvml, caplog: pytest.LogCaptureFixture) -> None:
    usage = GpuUsage(CUDA, environ={})
    with caplog.at_level(logging.INFO, logger=gpu_usage.__name__):
        assert usage.open()
    expected = f"GPU metrics (nv_gpu_*) for {UUIDS[0]} (NVIDIA H200), {UUIDS[1]} (NVIDIA H200)"
    assert [r.getMessage() for r in caplog.records] == [expected]
    assert usage.gauge_values() == []  # nothing read yet
    lib.gpus[0].utilization_percent = 40
    usage.poll()
    assert usage.wait_polls(1, 0.0) and not usage.wait_polls(2, 0.0)
    lib.gpus[0].utilization_percent = 90  # read at the next poll
    values = {(n, labels["gpu_uuid"]): v for n, labels, v in usage.gauge_values()}
    assert values[(UTILIZATION, UUIDS[0])] == pytest.approx(0.4) and len(values) == 12
    usage.close()
    assert usage.gauge_values() == [] and (lib.inits, lib.shutdowns) == (1, 1)


def test_the_thread_polls_and_close_lets_nvml_go_once(lib: FakeNvml) -> None:
    usage = GpuUsage(CUDA, environ={"CUDA_VISIBLE_DEVICES": "1"}, poll_s=0.01)
    usage.start()
    usage.start()  # once
    thread = next(t for t in threading.enumerate() if t.name == "gpu-metrics")
    assert thread is not None and thread.daemon and thread.name == "gpu-metrics"
    assert usage.wait_polls(1, BOUND_S)
    assert {uuid for _, uuid in names(usage)} == {UUIDS[1]}
    usage.close()
    usage.close()
    assert (lib.inits, lib.shutdowns) == (1, 1)
    assert usage.gauge_values() == []
    usage.start()  # after close: nothing starts again
    assert lib.inits == 1


def test_a_poll_stuck_in_the_driver_holds_no_scrape(lib: FakeNvml) -> None:
    # Read at each scrape, a 3 s NVML call had made every scrape 3 s (a tester, session 62).
    usage = GpuUsage(CUDA, environ={}, poll_s=0.01)
    usage.start()
    assert usage.wait_polls(1, BOUND_S) and len(names(usage)) == 12
    entered, release = threading.Event(), threading.Event()

    def stuck() -> None:
        entered.set()
        release.wait(BOUND_S)

    lib.calls["nvmlDeviceGetPowerUsage"] = stuck
    assert entered.wait(BOUND_S)  # the poll thread is inside NVML now
    assert len(names(usage)) == 12  # the scrape answered from the last poll meanwhile
    release.set()
    usage.close()
    assert lib.shutdowns == 1


def test_nvmls_start_does_not_hold_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow_load() -> tuple[Any, str]:
        entered.set()
        release.wait(BOUND_S)
        return None, "NVML did not start: Timeout"

    usage = GpuUsage(CUDA, environ={}, load=slow_load, poll_s=0.01)
    usage.start()  # returns while NVML starts on the thread
    assert entered.wait(BOUND_S)
    assert usage.gauge_values() == []
    release.set()
    usage.close()


@pytest.mark.parametrize(
    ("providers", "level"), [(CUDA, logging.INFO), (["CPUExecutionProvider"], logging.DEBUG)]
)
def test_nothing_to_show_is_said_once_at_the_level_expected(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, providers: list[str], level: int
) -> None:
    install(monkeypatch, FakeNvml([FakeGpu(UUIDS[0])], init_code=DRIVER_NOT_LOADED))
    usage = GpuUsage(providers, environ={})
    with caplog.at_level(logging.DEBUG, logger=gpu_usage.__name__):
        assert not usage.open()
    [record] = caplog.records
    assert record.levelno == level  # a CPU install says it only at DEBUG: no GPU was expected
    assert record.getMessage() == "GPU metrics: none (NVML did not start: Driver Not Loaded)"


def test_a_failure_of_any_kind_at_the_start_is_no_series_not_a_failed_server(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken() -> tuple[Any, str]:
        raise OSError("libnvidia-ml.so.1: cannot map segment")

    usage = GpuUsage(CUDA, environ={}, load=broken)
    with caplog.at_level(logging.INFO, logger=gpu_usage.__name__):
        assert not usage.open()
    assert "GPU metrics: none (NVML failed: OSError: libnvidia-ml.so.1: cannot map segment)" in caplog.text
    usage.close()


def test_a_source_never_started_never_starts_nvml(lib: FakeNvml) -> None:
    usage = GpuUsage(CUDA, environ={})
    usage.close()
    assert (lib.inits, lib.shutdowns) == (0, 0)


class _NoViews:
    def views(self) -> list[Any]:
        return []

    def histograms(self) -> list[Any]:
        return []


def test_metrics_start_and_stop_start_and_close_the_sources(lib: FakeNvml) -> None:
    metrics = Metrics(views=_NoViews(), enabled=True)  # type: ignore[arg-type]
    usage = GpuUsage(CUDA, environ={}, poll_s=0.01)
    metrics.add_gauge_source(usage.gauge_values, gpu_usage.METRICS, usage.close, usage.start)
    assert lib.inits == 0  # not before the page is served
    metrics.start("127.0.0.1", 0)
    assert usage.wait_polls(1, BOUND_S)
    assert b'nv_gpu_power_limit{gpu_uuid="GPU-aaaa-1111"} 700' in metrics.page()
    metrics.stop()
    metrics.stop()
    assert (lib.inits, lib.shutdowns) == (1, 1)
    assert b"nv_gpu" not in metrics.page()


def test_a_poll_that_fails_shows_nothing_and_the_thread_goes_on(
    lib: FakeNvml, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A failure had ended the thread silently, the last values shown for ever (a tester, s62).
    from server.observability.gpu_readings import GpuReadings

    real = GpuReadings.read
    outcomes = iter([True, True, False, True])  # fail, fail, read, fail, then read

    def read_failing(self: GpuReadings) -> list[Any]:
        if next(outcomes, False):
            raise RuntimeError("a poll's own failure")
        return real(self)

    monkeypatch.setattr(GpuReadings, "read", read_failing)
    usage = GpuUsage(CUDA, environ={}, poll_s=0.01)
    with caplog.at_level(logging.ERROR, logger=gpu_usage.__name__):
        usage.start()
        assert usage.wait_polls(2, BOUND_S)  # the polls after the failed ones
    assert len(names(usage)) == 12
    said = [r.getMessage() for r in caplog.records]
    assert said == ["GPU metrics: a poll failed; no GPU series until one succeeds"] * 2  # once a spell
    usage.close()
    assert lib.shutdowns == 1


def test_a_second_close_does_not_let_nvml_go_under_a_stuck_poll(
    lib: FakeNvml, caplog: pytest.LogCaptureFixture
) -> None:
    usage = GpuUsage(CUDA, environ={}, poll_s=0.01)
    usage.start()
    assert usage.wait_polls(1, BOUND_S)
    entered, release = threading.Event(), threading.Event()

    def stuck() -> None:
        entered.set()
        release.wait(BOUND_S)

    lib.calls["nvmlDeviceGetPowerUsage"] = stuck
    assert entered.wait(BOUND_S)
    thread = next(t for t in threading.enumerate() if t.name == "gpu-metrics")
    with caplog.at_level(logging.WARNING, logger=gpu_usage.__name__):
        usage.close()  # waits a second for the poll, then leaves it to the driver
    said = "GPU metrics: NVML did not answer within 1 s of the stop: left to it"
    assert [r.getMessage() for r in caplog.records] == [said]
    usage.close()
    assert lib.shutdowns == 0  # not while the poll is inside NVML
    release.set()
    assert thread is not None
    thread.join(BOUND_S)
    assert lib.shutdowns == 1  # the thread let it go after its last call


def test_a_stop_while_nvml_starts_shows_and_says_nothing(
    lib: FakeNvml, caplog: pytest.LogCaptureFixture
) -> None:
    from server.observability.gpu_readings import load_binding

    entered, release = threading.Event(), threading.Event()

    def slow_start() -> tuple[Any, str]:
        entered.set()
        release.wait(BOUND_S)
        return load_binding()

    usage = GpuUsage(CUDA, environ={}, load=slow_start, poll_s=0.01)
    with caplog.at_level(logging.INFO, logger=gpu_usage.__name__):
        usage.start()
        assert entered.wait(BOUND_S)
        thread = next(t for t in threading.enumerate() if t.name == "gpu-metrics")
        usage.close()
        release.set()
        assert thread is not None
        thread.join(BOUND_S)
    assert (lib.inits, lib.shutdowns) == (1, 1)
    assert "GPU metrics (nv_gpu_*)" not in caplog.text
    assert usage.gauge_values() == []
