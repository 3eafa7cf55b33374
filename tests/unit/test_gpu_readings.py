"""NVML's readings for Triton's GPU gauges (server/observability/gpu_readings.py) through NVIDIA's
real binding (pynvml) answering from a stand-in NVML library (tests/support/fake_nvml.py): the
units converted, the GPUs CUDA_VISIBLE_DEVICES lets through (indices kept where NVML cannot name a
GPU), a reading a GPU refuses or a binding's failure left off alone and said once, memory used as
v2 reads it, the energy counted by increases (a counter that goes back adds nothing), and no
readings (said why) where NVML cannot start or list its GPUs."""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.observability import gpu_readings
from server.observability.gpu_readings import (
    ENERGY,
    MEMORY_TOTAL,
    MEMORY_USED,
    POWER_LIMIT,
    POWER_USAGE,
    UTILIZATION,
    GpuReadings,
    load_binding,
    open_readings,
    visible_indices,
)
from tests.support.fake_nvml import DRIVER_NOT_LOADED, FakeGpu, FakeNvml, install

UUIDS = ["GPU-aaaa-1111", "GPU-bbbb-2222", "GPU-abcd-3333"]


def series(readings: GpuReadings) -> dict[tuple[str, str], float]:
    return {(name, labels["gpu_uuid"]): value for name, labels, value in readings.read()}


@pytest.fixture
def lib(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    # Energies apart at the start (the driver counts from its own load): each GPU's base its own.
    fake = FakeNvml([FakeGpu(uuid, energy_mj=1_000_000 * (k + 1)) for k, uuid in enumerate(UUIDS[:2])])
    install(monkeypatch, fake)
    return fake


@pytest.fixture
def readings(lib: FakeNvml) -> Iterator[GpuReadings]:
    opened, why = open_readings(None)
    assert opened is not None, why
    yield opened
    opened.shutdown()


def test_visible_indices_reads_cuda_visible_devices_as_cuda_does() -> None:
    assert visible_indices(None, UUIDS) == [0, 1, 2]  # unset: every GPU
    assert visible_indices("", UUIDS) == []  # set but empty: none
    assert visible_indices("2,0", UUIDS) == [2, 0]  # CUDA's order, as listed
    assert visible_indices(" 1 ", UUIDS) == [1]
    assert visible_indices("0,7,1", UUIDS) == [0]  # read up to the first index out of range
    assert visible_indices("1,3", UUIDS) == [1]  # 3 of three GPUs: out of range
    assert visible_indices("1,1,2", UUIDS) == [1]  # ... or a repeat
    assert visible_indices("0,-1,1", UUIDS) == [0]  # ... or anything else
    assert visible_indices("GPU-bbbb", UUIDS) == [1]  # a unique prefix names its GPU
    assert visible_indices("GPU-a,1", UUIDS) == []  # a prefix of two names none: the list ends
    assert visible_indices("GPU-abcd-3333,GPU-cccc", UUIDS) == [2]  # no such GPU: it ends
    assert visible_indices("1,GPU-bbbb-2222", UUIDS) == [1]  # the same GPU twice
    assert visible_indices("MIG-9999,0", UUIDS) == [0]  # a MIG instance: passed over
    assert visible_indices("0", []) == []
    assert visible_indices("1", [None, "GPU-b"]) == [1]  # a GPU NVML cannot name keeps its index
    assert visible_indices("GPU-b", [None, "GPU-b"]) == [1]


def test_every_series_of_every_gpu_in_tritons_units(lib: FakeNvml, readings: GpuReadings) -> None:
    first, second = lib.gpus
    first.utilization_percent, second.utilization_percent = 57, 3
    second.memory_used, second.power_mw, second.limit_mw = 1_234_567, 123_456, 350_000
    got = series(readings)
    assert got[(UTILIZATION, first.uuid)] == pytest.approx(0.57)
    assert got[(UTILIZATION, second.uuid)] == pytest.approx(0.03)
    assert got[(MEMORY_TOTAL, first.uuid)] == first.memory_total
    assert got[(MEMORY_USED, second.uuid)] == 1_234_567  # v2's: allocated, not the reservation
    assert got[(POWER_USAGE, second.uuid)] == pytest.approx(123.456)  # NVML's milliwatts, in watts
    assert got[(POWER_LIMIT, second.uuid)] == pytest.approx(350.0)
    assert got[(ENERGY, first.uuid)] == 0.0  # none since the start, whatever the driver counted before
    assert len(got) == 12  # six series of each GPU, nothing else
    assert [gpu.name for gpu in readings.gpus] == ["NVIDIA H200", "NVIDIA H200"]


def test_a_driver_without_memory_v2_reads_v1(lib: FakeNvml, readings: GpuReadings) -> None:
    lib.memory_v2 = False
    gpu = lib.gpus[0]
    assert series(readings)[(MEMORY_USED, gpu.uuid)] == gpu.memory_used + gpu.memory_reserved


def test_energy_is_counted_in_joules_from_the_start(lib: FakeNvml, readings: GpuReadings) -> None:
    lib.gpus[0].energy_mj += 2_500
    lib.gpus[1].energy_mj += 40_000_000
    got = series(readings)
    assert got[(ENERGY, UUIDS[0])] == pytest.approx(2.5)
    assert got[(ENERGY, UUIDS[1])] == pytest.approx(40_000.0)


def test_a_counter_that_goes_back_adds_nothing_and_counting_goes_on(
    lib: FakeNvml, readings: GpuReadings
) -> None:
    gpu = lib.gpus[0]
    gpu.energy_mj += 2_000_000
    assert series(readings)[(ENERGY, gpu.uuid)] == pytest.approx(2_000.0)
    gpu.energy_mj = 10_000  # a driver reload or a GPU reset: NVML's total starts again
    assert series(readings)[(ENERGY, gpu.uuid)] == pytest.approx(2_000.0)
    gpu.energy_mj += 3_000_000
    assert series(readings)[(ENERGY, gpu.uuid)] == pytest.approx(5_000.0)  # was 0.0, and stayed


def test_a_reading_a_gpu_refuses_is_left_off_for_that_gpu_alone_and_said_once(
    lib: FakeNvml, readings: GpuReadings, caplog: pytest.LogCaptureFixture
) -> None:
    lib.gpus[1].refuses.add("nvmlDeviceGetPowerUsage")
    with caplog.at_level(logging.INFO, logger=gpu_readings.__name__):
        got = series(readings)
        again = series(readings)
    assert (POWER_USAGE, UUIDS[1]) not in got
    assert (POWER_USAGE, UUIDS[0]) in got and (POWER_LIMIT, UUIDS[1]) in got
    assert again == got
    said = f"GPU metrics: left off for {UUIDS[1]} (NVIDIA H200): {POWER_USAGE} (Not Supported)"
    assert [r.getMessage() for r in caplog.records] == [said]


def test_a_lost_gpu_is_said_in_one_line_and_the_others_go_on(
    lib: FakeNvml, readings: GpuReadings, caplog: pytest.LogCaptureFixture
) -> None:
    lib.gpus[0].lost = True
    with caplog.at_level(logging.INFO, logger=gpu_readings.__name__):
        got = series(readings)
    assert {uuid for _, uuid in got} == {UUIDS[1]} and len(got) == 6
    [record] = caplog.records
    assert record.getMessage().count("GPU is lost") == 6


def test_a_bindings_own_failure_leaves_that_series_off_and_the_rest_on(
    lib: FakeNvml, readings: GpuReadings, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> None:
        raise ctypes.ArgumentError("argument 2: wrong type")

    lib.calls["nvmlDeviceGetMemoryInfo"] = broken
    with caplog.at_level(logging.INFO, logger=gpu_readings.__name__):
        got = series(readings)
    assert len(got) == 8  # both GPUs' other four series
    assert (MEMORY_TOTAL, UUIDS[0]) not in got and (POWER_LIMIT, UUIDS[1]) in got
    assert "argument 2: wrong type" in caplog.text


def test_energy_refused_at_the_start_counts_from_its_first_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = FakeGpu(UUIDS[0], refuses={"nvmlDeviceGetTotalEnergyConsumption"})
    install(monkeypatch, FakeNvml([gpu]))
    readings, _ = open_readings(None)
    assert readings is not None
    assert (ENERGY, UUIDS[0]) not in series(readings)
    gpu.refuses.clear()
    gpu.energy_mj += 1_000
    assert series(readings)[(ENERGY, UUIDS[0])] == 0.0
    gpu.energy_mj += 3_000
    assert series(readings)[(ENERGY, UUIDS[0])] == pytest.approx(3.0)


def test_a_gpu_nvml_cannot_name_keeps_its_index(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # CUDA_VISIBLE_DEVICES=1 is the second GPU, not the third read in its place (a tester, s62).
    gpus = [FakeGpu("GPU-00", refuses={"nvmlDeviceGetUUID"}), FakeGpu("GPU-11"), FakeGpu("GPU-22")]
    install(monkeypatch, FakeNvml(gpus))
    with caplog.at_level(logging.INFO, logger=gpu_readings.__name__):
        readings, _ = open_readings("1")
    assert readings is not None and [gpu.uuid for gpu in readings.gpus] == ["GPU-11"]
    assert "GPU metrics: NVML's GPU 0 is left off: Not Supported" in [r.getMessage() for r in caplog.records]
    readings, why = open_readings("0")
    assert readings is None and why == "none of 3 GPUs visible: CUDA_VISIBLE_DEVICES='0'"


def test_no_gpu_visible_is_no_readings_and_nvml_let_go(lib: FakeNvml) -> None:
    assert open_readings("") == (None, "none of 2 GPUs visible: CUDA_VISIBLE_DEVICES=''")
    assert (lib.inits, lib.shutdowns) == (1, 1)


def test_nvml_that_cannot_count_its_gpus_is_no_readings_and_let_go(monkeypatch: pytest.MonkeyPatch) -> None:
    lib = FakeNvml([FakeGpu(UUIDS[0])])
    lib.count_code = DRIVER_NOT_LOADED
    lib.shutdown_code = DRIVER_NOT_LOADED  # and whose shutdown fails too: not raised
    install(monkeypatch, lib)
    assert open_readings(None) == (None, "NVML could not list the GPUs: Driver Not Loaded")
    assert lib.shutdowns == 1


def test_nvml_that_cannot_start_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, FakeNvml([FakeGpu(UUIDS[0])], init_code=DRIVER_NOT_LOADED))
    assert open_readings(None) == (None, "NVML did not start: Driver Not Loaded")


def test_a_failing_shutdown_is_not_raised(
    lib: FakeNvml, readings: GpuReadings, caplog: pytest.LogCaptureFixture
) -> None:
    lib.shutdown_code = DRIVER_NOT_LOADED
    with caplog.at_level(logging.DEBUG, logger=gpu_readings.__name__):
        readings.shutdown()
    assert [r.getMessage() for r in caplog.records] == ["GPU metrics: nvmlShutdown failed: Driver Not Loaded"]


def test_without_the_binding_or_the_driver_it_says_so() -> None:
    def missing(name: str) -> Any:
        raise ImportError(name)

    assert load_binding(missing, lambda: True) == (
        None,
        "nvidia-ml-py is not installed (the gpu extras install it)",
    )
    imported: list[str] = []
    assert load_binding(imported.append, lambda: False) == (
        None,
        "libnvidia-ml.so.1 does not load: no NVIDIA driver here",
    )
    assert imported == []  # not even imported


def test_a_library_that_loads_is_said_to() -> None:
    assert gpu_readings.driver_library_loads("libc.so.6")
    assert not gpu_readings.driver_library_loads("libnot-a-library-here.so.1")


def test_on_a_machine_without_a_driver_the_real_path_reads_nothing() -> None:
    if Path("/proc/driver/nvidia").exists():
        pytest.skip("an NVIDIA driver is here: tests/integration/test_gpu.py reads it")
    assert not gpu_readings.driver_library_loads()
    assert open_readings(None) == (None, "libnvidia-ml.so.1 does not load: no NVIDIA driver here")


def test_older_bindings_bytes_are_read_as_text() -> None:
    assert gpu_readings._text(b"GPU-ab\xffcd") == "GPU-ab\ufffdcd"  # not UTF-8: replaced, not raised
    assert gpu_readings._text("GPU-ab") == "GPU-ab"


def test_a_lost_gpu_does_not_move_the_others_to_v1s_memory(lib: FakeNvml, readings: GpuReadings) -> None:
    # One GPU's error on the v2 call had put every GPU on v1 for good (a tester, session 62).
    first, second = lib.gpus
    first.lost = True
    assert series(readings)[(MEMORY_USED, second.uuid)] == second.memory_used
    first.lost = False
    got = series(readings)
    assert got[(MEMORY_USED, first.uuid)] == first.memory_used  # v2's, not v1's with the reservation
    assert got[(MEMORY_USED, second.uuid)] == second.memory_used


def test_a_series_read_again_is_said_and_a_later_loss_said_again(
    lib: FakeNvml, readings: GpuReadings, caplog: pytest.LogCaptureFixture
) -> None:
    gpu = lib.gpus[1]
    with caplog.at_level(logging.INFO, logger=gpu_readings.__name__):
        gpu.refuses.add("nvmlDeviceGetPowerUsage")
        series(readings)
        gpu.refuses.clear()
        assert (POWER_USAGE, gpu.uuid) in series(readings)
        gpu.refuses.add("nvmlDeviceGetPowerUsage")
        series(readings)
    assert [r.getMessage() for r in caplog.records] == [
        f"GPU metrics: left off for {gpu.uuid} (NVIDIA H200): {POWER_USAGE} (Not Supported)",
        f"GPU metrics: read again for {gpu.uuid} (NVIDIA H200): {POWER_USAGE}",
        f"GPU metrics: left off for {gpu.uuid} (NVIDIA H200): {POWER_USAGE} (Not Supported)",
    ]


def test_an_error_whose_text_fails_is_said_by_its_type(
    lib: FakeNvml, readings: GpuReadings, caplog: pytest.LogCaptureFixture
) -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no text")

    def broken() -> None:
        raise Unprintable()

    lib.calls["nvmlDeviceGetPowerManagementLimit"] = broken
    with caplog.at_level(logging.INFO, logger=gpu_readings.__name__):
        got = series(readings)
    assert (POWER_LIMIT, UUIDS[0]) not in got and len(got) == 10
    assert f"{POWER_LIMIT} (Unprintable)" in caplog.text


@pytest.mark.parametrize("code", [13, 25], ids=["no such function", "another version"])
def test_a_gpu_whose_driver_has_no_v2_reading_stays_on_v1(
    lib: FakeNvml, readings: GpuReadings, code: int
) -> None:
    lib.memory_v2, lib.memory_v2_code = False, code
    gpu = lib.gpus[0]
    series(readings)
    asked = lib.memory_v2_calls
    assert series(readings)[(MEMORY_USED, gpu.uuid)] == gpu.memory_used + gpu.memory_reserved
    assert lib.memory_v2_calls == asked  # not asked again


def test_a_uuid_names_its_gpu_and_an_open_says_nothing_is_wrong(lib: FakeNvml) -> None:
    readings, why = open_readings("GPU-bbbb")
    assert readings is not None and why == ""
    assert [gpu.uuid for gpu in readings.gpus] == [UUIDS[1]]


def test_a_lost_gpus_series_are_said_in_one_line(
    lib: FakeNvml, readings: GpuReadings, caplog: pytest.LogCaptureFixture
) -> None:
    lib.gpus[0].refuses.update({"nvmlDeviceGetPowerUsage", "nvmlDeviceGetPowerManagementLimit"})
    with caplog.at_level(logging.INFO, logger=gpu_readings.__name__):
        series(readings)
    refused = f"{POWER_USAGE} (Not Supported), {POWER_LIMIT} (Not Supported)"
    said = f"GPU metrics: left off for {UUIDS[0]} (NVIDIA H200): {refused}"
    assert [r.getMessage() for r in caplog.records] == [said]


def test_an_error_of_no_text_is_said_by_its_type(
    lib: FakeNvml, readings: GpuReadings, caplog: pytest.LogCaptureFixture
) -> None:
    def silent() -> None:
        raise ValueError()

    lib.calls["nvmlDeviceGetUtilizationRates"] = silent
    with caplog.at_level(logging.INFO, logger=gpu_readings.__name__):
        series(readings)
    assert f"{UTILIZATION} (ValueError)" in caplog.text
