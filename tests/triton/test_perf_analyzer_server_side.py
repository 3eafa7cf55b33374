"""perf_analyzer's server-side figures (read from ModelStatistics) against its own client side and
against the server's statistics at rest, as a user tuning a deployment trusts them.

A fresh server per run, with one model (`mlp_pa`, the demo mlp under its own name) that nothing
else calls, so after perf_analyzer exits every request it sent (warm-up windows included) is in
ModelStatistics: the counts are checked exactly there, and against /metrics.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import tritonclient.grpc as triton

from tests.support.metrics_page import metrics_lines
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess
from tests.triton.test_perf_analyzer import PERF_ANALYZER, SHM, perf_analyzer, remove_regions_left

__all__ = ["perf_analyzer"]  # the fixture, imported for pytest
pytestmark = [
    pytest.mark.timeout(720),
    pytest.mark.skipif(not PERF_ANALYZER.exists(), reason="no perf_analyzer"),
]

ROWS = 3  # perf_analyzer's -b: rows per request
CONCURRENCY = 2
TRIALS = 3
_SERVER = re.compile(
    r"Server:\s+Inference count: (\d+)\s+Execution count: (\d+)\s+Successful request count: (\d+)\s+"
    r"Avg request latency: (\d+) usec \(overhead (\d+) usec \+ queue (\d+) usec \+ compute input (\d+) usec "
    r"\+ compute infer (\d+) usec \+ compute output (\d+) usec\)"
)
_CLIENT = re.compile(r"Client:\s+Request count: (\d+).*?Avg latency: (\d+) usec", re.S)


def _nv(server: ServerProcess, name: str) -> float:
    prefix = f'{name}{{model="mlp_pa",version="1"}} '
    (value,) = [float(line[len(prefix) :]) for line in metrics_lines(server) if line.startswith(prefix)]
    return value


@pytest.mark.parametrize(
    "mode", [["--async"], ["--streaming", "--shared-memory", "system"]], ids=["async", "streaming-shm"]
)
def test_server_side_figures_agree_with_the_client_and_with_statistics(
    perf_analyzer: Path, demo_repo: Path, tmp_path: Path, mode: list[str]
) -> None:
    repo = tmp_path / "repo"
    config = (demo_repo / "mlp" / "config.pbtxt").read_text().replace('"mlp"', '"mlp_pa"')
    write_model(repo, "mlp_pa", demo_repo / "mlp" / "1" / "model.onnx", config)
    before = set(SHM.iterdir())
    try:
        with ServerProcess("--model-repository", str(repo), "--allow-client-shm") as server:
            command = [
                str(perf_analyzer), "-m", "mlp_pa", "-u", server.address, "-i", "grpc", "-b", str(ROWS),
                "--concurrency-range", str(CONCURRENCY), "--measurement-mode", "count_windows",
                "--measurement-request-count", "300", "--max-trials", str(TRIALS),
                "--stability-percentage", "999",
                *mode,
            ]  # fmt: skip
            run = subprocess.run(command, capture_output=True, text=True, timeout=300)
            output = run.stdout + run.stderr
            assert run.returncode == 0, output[-3000:]
            with triton.InferenceServerClient(server.address) as client:
                (stats,) = client.get_inference_statistics("mlp_pa", "1").model_stats
            page = {name: _nv(server, name) for name in (
                "nv_inference_request_success", "nv_inference_count", "nv_inference_exec_count",
                "nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us")}  # fmt: skip
    finally:
        remove_regions_left(before, ("features", "scores"))

    server_side, client_side = _SERVER.search(output), _CLIENT.search(output)
    assert server_side and client_side, output[-3000:]
    inferences, executions, successes, latency, overhead, *parts = map(int, server_side.groups())
    requests, client_latency = map(int, client_side.groups())
    # Within its windows (the last TRIALS, merged): the rows of its requests, in runs of at most
    # max_batch_size rows; a request in flight as a window's snapshot is taken may fall on either
    # side of it (up to CONCURRENCY at each end of each window; seen: 4062 against 4056).
    slack = 2 * CONCURRENCY * TRIALS
    assert abs(successes - requests) <= slack, output[-2000:]
    assert abs(inferences - ROWS * successes) <= ROWS * slack, output[-2000:]
    assert inferences / 128 <= executions <= inferences
    # The server's part of a request's time is inside the client's, and made of its parts.
    assert sum(parts) <= latency <= client_latency + 1, output[-2000:]  # +1: each figure is rounded down
    assert overhead == pytest.approx(latency - sum(parts), abs=len(parts) + 1)

    # At rest, every request it sent is counted exactly, the same on /metrics.
    figures = stats.inference_stats
    sent = figures.success.count
    assert sent >= successes and figures.fail.count == 0
    assert figures.queue.count == figures.compute_input.count == figures.compute_infer.count == sent
    assert figures.compute_output.count == sent and figures.cache_hit.count == figures.cache_miss.count == 0
    assert stats.inference_count == ROWS * sent
    assert sum(b.batch_size * b.compute_infer.count for b in stats.batch_stats) == stats.inference_count
    assert sum(b.compute_infer.count for b in stats.batch_stats) == stats.execution_count
    assert (page["nv_inference_request_success"], page["nv_inference_count"]) == (sent, stats.inference_count)
    assert page["nv_inference_exec_count"] == stats.execution_count
    # Whole microseconds, as Triton's counters.
    assert page["nv_inference_queue_duration_us"] == figures.queue.ns // 1000
    assert page["nv_inference_compute_infer_duration_us"] == figures.compute_infer.ns // 1000
