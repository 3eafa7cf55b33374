"""The benchmark peers (loadtest/peers) start, answer a KServe v2 ModelInfer, and stop on SIGTERM.

floor and limit run in this venv and are always tested. pytriton and mlserver run in venvs of their
own that `python -m loadtest.peers.<name>` installs on first use (hundreds of MB): their tests are
skipped until that has happened once on this machine.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.server_process import CACHE_DIR, REPO_ROOT, wait_until

_READY = re.compile(r"ready on 127\.0\.0\.1:(\d+)")
PEERS_CACHE = REPO_ROOT / ".cache" / "peers"
StubFor = Callable[[int], pb_grpc.GRPCInferenceServiceStub]


def installed(name: str) -> bool:
    return (PEERS_CACHE / name / "installed.json").is_file()


class Peer:
    def __init__(self, name: str, *args: str) -> None:
        command = [sys.executable, "-m", f"loadtest.peers.{name}", "--cache-dir", str(CACHE_DIR), *args]
        self.process = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        self.port = 0
        ready = threading.Event()
        threading.Thread(target=self._pump, args=(ready,), daemon=True).start()
        if not ready.wait(180) or self.port == 0:
            self.process.kill()
            raise RuntimeError(f"peer {name} did not start:\n" + "".join(self.lines[-40:]))

    def _pump(self, ready: threading.Event) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            match = _READY.search(line)
            if match:
                self.port = int(match.group(1))
                ready.set()
        ready.set()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


@pytest.fixture
def stub_for() -> Iterator[StubFor]:
    channels: list[grpc.Channel] = []

    def make(port: int) -> pb_grpc.GRPCInferenceServiceStub:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        channels.append(channel)
        return pb_grpc.GRPCInferenceServiceStub(channel)

    yield make
    for channel in channels:
        channel.close()


def infer_mlp(stub: pb_grpc.GRPCInferenceServiceStub, rows: int = 3) -> pb.ModelInferResponse:
    data = np.random.default_rng(0).random((rows, 64), dtype=np.float32)
    tensor = pb.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[rows, 64])
    request = pb.ModelInferRequest(model_name="mlp", inputs=[tensor], raw_input_contents=[data.tobytes()])
    reply: pb.ModelInferResponse = stub.ModelInfer(request, timeout=30)
    assert reply.outputs[0].name == "scores"
    assert list(reply.outputs[0].shape) == [rows, 2]
    assert len(reply.raw_output_contents[0]) == rows * 2 * 4
    return reply


def scores(reply: pb.ModelInferResponse) -> np.ndarray:
    return np.frombuffer(reply.raw_output_contents[0], dtype=np.float32).reshape(-1, 2)


@pytest.mark.parametrize("api", ["aio", "sync"])
@pytest.mark.parametrize("mode", ["echo", "ort"])
def test_floor_serves_what_perf_analyzer_asks(mode: str, api: str, stub_for: StubFor) -> None:
    peer = Peer("floor", "--mode", mode, "--api", api, "--port", "0")
    try:
        stub = stub_for(peer.port)
        reply = infer_mlp(stub)
        if mode == "echo":
            assert not scores(reply).any()
        # perf_analyzer --streaming: answers come back on the stream, one per request, in order.
        requests = [
            pb.ModelInferRequest(
                model_name="mlp",
                id=f"s{i}",
                inputs=[
                    pb.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[1, 64])
                ],
                raw_input_contents=[bytes(64 * 4)],
            )
            for i in range(2)
        ]
        answers = list(stub.ModelStreamInfer(iter(requests), timeout=30))
        assert [a.infer_response.id for a in answers] == ["s0", "s1"]
        assert [list(a.infer_response.outputs[0].shape) for a in answers] == [[1, 2], [1, 2]]
        assert stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=10).name
        metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="mlp"), timeout=10)
        assert [t.name for t in metadata.inputs] == ["features"]
        config = stub.ModelConfig(pb.ModelConfigRequest(name="mlp"), timeout=10).config
        assert config.max_batch_size == 128
        stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="mlp"), timeout=10)
        assert stats.model_stats[0].inference_count == 3 + 2
    finally:
        assert peer.stop() == 0


def test_limit_prints_a_json_summary() -> None:
    args = ["--cache-dir", str(CACHE_DIR), "--seconds", "0.05", "--max-batch", "4"]
    run = subprocess.run(
        [sys.executable, "-m", "loadtest.peers.limit", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["peer"] == "limit" and sorted(summary["by_batch"], key=int) == ["1", "2", "4"]
    assert summary["best_rows_per_s"] > 0


@pytest.mark.skipif(not installed("pytriton"), reason="run `python -m loadtest.peers.pytriton` once first")
def test_pytriton_serves_the_same_model(stub_for: StubFor) -> None:
    peer = Peer("pytriton", "--port", "0")
    try:
        stub = stub_for(peer.port)
        infer_mlp(stub)

        # Statistics are open (no pytriton access token): perf_analyzer reads them. Triton counts
        # a request once its Python model has returned, which may be just after the answer left.
        def counted() -> int:
            stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="mlp"), timeout=10)
            return int(stats.model_stats[0].inference_count)

        wait_until(lambda: counted() >= 3, "pytriton's statistics to count the request", timeout_s=10)
        assert counted() == 3
        assert stub.ModelConfig(pb.ModelConfigRequest(name="mlp"), timeout=10).config.max_batch_size == 128
    finally:
        assert peer.stop() == 0


@pytest.mark.skipif(not installed("mlserver"), reason="run `python -m loadtest.peers.mlserver` once first")
def test_mlserver_serves_the_same_model(stub_for: StubFor) -> None:
    peer = Peer("mlserver", "--port", "0")
    try:
        stub = stub_for(peer.port)
        infer_mlp(stub)
        with pytest.raises(grpc.RpcError) as err:  # why perf_analyzer cannot drive MLServer
            stub.ModelConfig(pb.ModelConfigRequest(name="mlp"), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        assert peer.stop() == 0
