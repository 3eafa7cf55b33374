"""`sluiceway top` against `serve --workers 2`: the kernel hands each new connection to either
worker, each with its own counters. A channel per reading had mixed them (a steady 350/s read 348,
100, 87, -69); one channel for the session reads one worker, and `--workers 2` sums both."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from server.observability.top import add_top_parser, run_top
from tests.support.held_ports import held_ports
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess

OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]  # never a connection another channel holds
READINGS = 6  # `top --once` runs: with a channel per reading, each had an even chance of two workers


@pytest.fixture(scope="module")
def workers_server(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("top-workers-repo")
    config = (demo_repo / "mlp" / "config.pbtxt").read_text()
    write_model(repo, "mlp", demo_repo / "mlp" / "1" / "model.onnx", config)
    # Worker i serves metrics on P + i, which `top --workers 2` reads: P and P + 1 stay held from
    # the choice on, so no other test worker's server can take one before the workers bind it.
    with held_ports(2) as metrics_port:
        args = ("--model-repository", str(repo), "--workers", "2", "--metrics-port", str(metrics_port))
        with ServerProcess(*args) as server:
            assert server.metrics_port in (metrics_port, metrics_port + 1), server.output()
            server.metrics_port = metrics_port  # worker 0's, whichever worker printed first
            yield server


def infer(channel: grpc.Channel, count: int) -> None:
    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="features", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(np.zeros((1, 64), np.float32).tobytes())
    stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
    for _ in range(count):
        stub.ModelInfer(request, timeout=30)


def top(capsys: pytest.CaptureFixture[str], server: ServerProcess, *extra: str) -> str:
    parser = argparse.ArgumentParser()
    add_top_parser(parser.add_subparsers(dest="command"))
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    argv = ["top", "--once", "--interval", "0.1", "--target", server.address, "--metrics-url", url, *extra]
    assert run_top(parser.parse_args(argv)) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def mlp_cells(out: str) -> list[str]:
    (mlp,) = [line for line in out.splitlines() if " mlp " in f" {line} "]
    return [c.strip() for c in mlp.replace("│", "|").split("|") if c.strip()]


def test_every_reading_comes_from_one_worker(
    workers_server: ServerProcess, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    # 200 answers over one connection: one worker counts them, the other none.
    with grpc.insecure_channel(workers_server.address, options=OWN_CONNECTION) as ch:
        infer(ch, 200)
    for _ in range(READINGS):  # no traffic now: both readings of a run must agree
        out = top(capsys, workers_server)
        assert mlp_cells(out)[2] == "0.0", out
        assert "one server process" in out


def test_workers_summed_from_their_metrics(
    workers_server: ServerProcess, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.observability.top import worker_urls
    from server.observability.top_reader import Reader

    url = f"http://127.0.0.1:{workers_server.metrics_port}/metrics"
    reader = Reader(workers_server.address, worker_urls(url, 2))  # two URLs: /metrics only, no channel
    first = sum(s.success.get(("mlp", "1"), 0) for s in reader.read())
    for _ in range(8):  # fresh connections: the kernel spreads them over both workers
        with grpc.insecure_channel(workers_server.address, options=OWN_CONNECTION) as ch:
            infer(ch, 5)
    samples = reader.read()
    assert [s.metrics_error for s in samples] == [None, None]
    assert sum(s.success[("mlp", "1")] for s in samples) - first == 40
    monkeypatch.setenv("COLUMNS", "200")
    out = top(capsys, workers_server, "--workers", "2")
    assert mlp_cells(out)[2] == "0.0" and "sum of 2 workers" in out, out
