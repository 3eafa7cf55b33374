"""Triton's GPU gauges on a real server's /metrics (port on 127.0.0.1), read through NVIDIA's
binding from a stand-in NVML library (tests/support/fake_nvml.py): the families typed and labelled
as Triton's, perf_analyzer's names; none with `gpu_metrics` off; NVML let go when the server stops.
The real library's readings: tests/integration/test_gpu.py (marked gpu)."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.app import SluicewayServer
from server.settings import ServerSettings
from tests.support.fake_nvml import FakeGpu, FakeNvml, install
from tests.support.in_process import mlp_only_repo
from tests.support.perf_analyzer_tool import usable_perf_analyzer

PERF_ANALYZER_S = 120.0  # a run of ~3 s; its first call may set itself up
UUIDS = ("GPU-8e1e4f35-0000-1111-2222-333344445555", "GPU-8e1e4f35-6666-7777-8888-999900001111")


@pytest.fixture
def lib(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    fake = FakeNvml(
        [FakeGpu(UUIDS[0], utilization_percent=42), FakeGpu(UUIDS[1], refuses={"nvmlDeviceGetPowerUsage"})]
    )
    install(monkeypatch, fake)
    return fake


def page(server: SluicewayServer) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=30) as response:
        return response.read().decode()


async def started(demo_repo: Path, tmp_path: Path, gpu_metrics: bool) -> SluicewayServer:
    settings = ServerSettings(
        host="127.0.0.1",
        port=0,
        metrics_port=0,
        model_repository=mlp_only_repo(demo_repo, tmp_path / "repo"),
        cache_dir=tmp_path,
        gpu_metrics=gpu_metrics,
        metrics_interval_ms=20,  # NVML polled every 20 ms: the test waits for a poll, not 2 s
    )
    server = SluicewayServer(settings)
    await server.start()
    return server


async def polled(server: SluicewayServer, shows: str) -> str:
    """The page once it shows `shows` (the GPU thread's first poll, a later one's value): each
    check is a scrape through the metrics thread, which paces the wait."""
    for _ in range(2000):
        text = await asyncio.to_thread(page, server)
        if shows in text:
            return text
    raise AssertionError(f"the page never showed {shows!r}")


@pytest.fixture
async def server(demo_repo: Path, tmp_path: Path, lib: FakeNvml) -> AsyncIterator[SluicewayServer]:
    running = await started(demo_repo, tmp_path, gpu_metrics=True)
    try:
        yield running
    finally:
        await running.stop(grace_s=1.0)


async def test_each_gpu_has_tritons_gpu_families_on_the_page(server: SluicewayServer, lib: FakeNvml) -> None:
    await polled(server, "nv_gpu_utilization{")
    lib.gpus[0].energy_mj += 1_500
    text = await polled(server, f'nv_energy_consumption{{gpu_uuid="{UUIDS[0]}"}} 1.5')
    families = {f.name: f for f in text_string_to_metric_families(text)}
    expected = {
        "nv_gpu_utilization": "gauge",
        "nv_gpu_memory_total_bytes": "gauge",
        "nv_gpu_memory_used_bytes": "gauge",
        "nv_gpu_power_usage": "gauge",
        "nv_gpu_power_limit": "gauge",
        "nv_energy_consumption": "counter",
    }
    assert {name: families[name].type for name in expected} == expected
    values = {
        (f.name, s.labels["gpu_uuid"]): s.value
        for f in families.values()
        if f.name in expected
        for s in f.samples
    }
    assert values[("nv_gpu_utilization", UUIDS[0])] == pytest.approx(0.42)
    assert values[("nv_gpu_power_limit", UUIDS[1])] == pytest.approx(700.0)
    assert values[("nv_energy_consumption", UUIDS[0])] == pytest.approx(1.5)
    assert ("nv_gpu_power_usage", UUIDS[1]) not in values  # the board does not report it: left off
    assert len(values) == 11
    assert "nv_cpu_utilization" in families  # beside the CPU gauges, as Triton's page


async def test_the_gpu_gauges_stop_with_the_server(demo_repo: Path, tmp_path: Path, lib: FakeNvml) -> None:
    server = await started(demo_repo, tmp_path, gpu_metrics=True)
    await polled(server, "nv_gpu_utilization{")
    await server.stop(grace_s=1.0)
    assert (lib.inits, lib.shutdowns) == (1, 1)


async def test_gpu_metrics_off_leaves_them_off(demo_repo: Path, tmp_path: Path, lib: FakeNvml) -> None:
    server = await started(demo_repo, tmp_path, gpu_metrics=False)
    try:
        text = page(server)
    finally:
        await server.stop(grace_s=1.0)
    assert "nv_gpu" not in text and "nv_energy" not in text
    assert "nv_cpu_utilization" in text
    assert lib.inits == 0  # NVML not even started


async def test_perf_analyzer_reads_the_gpu_gauges(server: SluicewayServer, tmp_path: Path) -> None:
    """NVIDIA's load generator, `--collect-metrics`: each GPU's utilisation, power and memory in its
    CSV, where against a server without them it warns `Unable to parse 'nv_gpu_utilization'`."""
    tool = usable_perf_analyzer()
    if isinstance(tool, str):
        pytest.skip(tool)
    await polled(server, "nv_gpu_utilization{")
    csv = tmp_path / "pa.csv"
    command = [str(tool), "-m", "mlp", "-i", "grpc", "-u", f"127.0.0.1:{server.port}",
               "--shape", "features:1,64", "--collect-metrics", "--metrics-interval", "500",
               "--metrics-url", f"http://127.0.0.1:{server.metrics_port}/metrics",
               "--measurement-mode", "count_windows", "--measurement-request-count", "200",
               "--max-trials", "3", "--stability-percentage", "999",  # no stability asked: a busy CI
               "-f", str(csv), "--verbose-csv"]  # fmt: skip
    # The server's event loop is this test's: perf_analyzer runs beside it, not blocking it.
    run = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    said, _ = await asyncio.wait_for(run.communicate(), PERF_ANALYZER_S)
    assert run.returncode == 0, said.decode()[-2000:]
    assert b"Unable to parse" not in said, said.decode()[-2000:]
    header, row = csv.read_text().splitlines()[:2]
    measured = dict(zip(header.split(","), row.split(","), strict=True))
    assert measured["Avg GPU Utilization"] == f"{UUIDS[0]}:0.42;{UUIDS[1]}:0;"
    assert measured["Total GPU Memory"].startswith(f"{UUIDS[0]}:150000000000;")
    assert measured["Avg GPU Power Usage"] == f"{UUIDS[0]}:75;"  # the second's board does not say
