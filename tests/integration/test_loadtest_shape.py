"""`sluiceway-loadtest --shape` as perf_analyzer's: on a batching model it names the dims after the
batch dim and `--batch-size` gives the rows, which the report counts (throughput_ips over
throughput_rps is the rows a request carried, as the server computed them); a shape that includes
the batch dim is refused before any request, exit 2, saying what to pass.

What was sent is read from the server (ModelStatistics), not from the harness's own report.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from loadtest.cli import main
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.once import LOADTEST_RUNS, once_per_command
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess

pytestmark = [pytest.mark.serial, once_per_command(LOADTEST_RUNS)]

RUN = ["--model", "mlp", "--concurrency", "1", "--max-requests", "20", "--duration-s", "5", "--warmup-s", "0"]


@pytest.fixture(scope="module")
def server(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The demo mlp alone: features FP32 [-1, 64] (max_batch_size 128)."""
    repo = tmp_path_factory.mktemp("loadtest-shape-repo")
    config = (demo_repo / "mlp" / "config.pbtxt").read_text()
    write_model(repo, "mlp", demo_repo / "mlp" / "1" / "model.onnx", config)
    with ServerProcess("--model-repository", str(repo)) as process:
        yield process


def sent(server: ServerProcess) -> tuple[int, int]:
    """Requests (answered or failed) and rows the server has computed for the mlp."""
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        (stats,) = stub.ModelStatistics(pb.ModelStatisticsRequest(name="mlp"), timeout=30).model_stats
    requests = stats.inference_stats.success.count + stats.inference_stats.fail.count
    return requests, stats.inference_count


def test_shape_names_the_dims_after_the_batch_dim_and_the_rows_are_counted(
    server: ServerProcess, tmp_path: Path
) -> None:
    # `features=64` had gone out as [64]: every request refused "Expected [-1,64], got [64]".
    requests0, rows0 = sent(server)
    args = [*RUN, "--target", server.address, "--shape", "features=64", "--batch-size", "4"]
    assert main([*args, "--quiet", "--out", str(tmp_path), "--no-plots"]) == 0
    (entry,) = json.loads((tmp_path / "results.json").read_text())["results"]
    assert entry["ok"] == 20 and entry["errors"] == {}, entry.get("error_messages")
    requests1, rows1 = sent(server)
    assert requests1 - requests0 == 20
    assert rows1 - rows0 == 20 * 4  # the server computed 4 rows a request
    # The report's rows per request are those the server computed.
    assert entry["throughput_ips"] / entry["throughput_rps"] == (rows1 - rows0) / (requests1 - requests0)


def test_a_shape_with_the_batch_dim_is_refused_before_any_request(
    server: ServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    # It had sent 1 row a request while throughput_ips counted --batch-size 4 (3216 reported
    # rows/s while the server computed 802).
    before = sent(server)
    args = [*RUN, "--target", server.address, "--shape", "features=1,64", "--batch-size", "4", "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--shape features=1,64 does not fit input 'features' with dims [-1,64]" in err
    assert "pass --shape features=64 and the rows as --batch-size" in err
    assert sent(server) == before
