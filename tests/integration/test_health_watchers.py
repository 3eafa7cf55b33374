"""Two grpc health Watches of one model over a real server: when one client goes away, the other
still hears of the model's unload. grpc_health 1.81 dropped the service's wait condition when any
Watch of it ended, and the Watches still open heard of no change until the server drained
(server/protocol/side_streams.py, LimitedHealth._follow)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients import NO_RETRY, Client
from server.errors import MESSAGE_MAX_BYTES
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess

SERVING = health_pb2.HealthCheckResponse.SERVING
TIMEOUT_S = 30  # each Watch's deadline: only a server that never tells it reaches it


def test_a_watch_hears_of_the_unload_after_another_watch_of_the_model_ended(
    demo_repo: Path, tmp_path: Path
) -> None:
    mlp = demo_repo / "mlp"
    repo = tmp_path / "repo"
    write_model(repo, "mlp", mlp / "1" / "model.onnx", (mlp / "config.pbtxt").read_text())
    args = ("--model-repository", str(repo), "--model-control-mode", "explicit")
    with ServerProcess(*args) as server, Client(server.address, retry=NO_RETRY) as client:
        client.load_model("mlp")
        with grpc.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service="mlp")
            staying = health.Watch(request, timeout=TIMEOUT_S)
            leaving = health.Watch(request, timeout=TIMEOUT_S)
            assert next(staying).status == next(leaving).status == SERVING
            leaving.cancel()  # its client goes away; the server ends that Watch
            client.unload_model("mlp")
            told = next(staying).status  # had waited for the deadline: DEADLINE_EXCEEDED
            assert told != SERVING, health_pb2.HealthCheckResponse.ServingStatus.Name(told)
            staying.cancel()


def test_check_of_a_long_unknown_name_answers_not_found_cut(zoo_server: ServerProcess) -> None:
    # Its message had echoed the whole name: past grpc's 8 KiB of metadata the client got
    # RESOURCE_EXHAUSTED ("received metadata size exceeds ... limit") instead of NOT_FOUND.
    name = "n" * 20_000
    with grpc.insecure_channel(zoo_server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            health.Check(health_pb2.HealthCheckRequest(service=name), timeout=TIMEOUT_S)
        said = f"the server has no health service '{name}'"
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND, caught.value.details()
        assert caught.value.details() == said[:MESSAGE_MAX_BYTES] + f"... (cut: {len(said)} bytes)"
        assert health.Check(health_pb2.HealthCheckRequest(service="mlp"), timeout=TIMEOUT_S).status == SERVING
