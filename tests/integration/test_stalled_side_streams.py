"""A health Watch and a reflection stream whose clients stopped reading, on a real server: the
stop leaves them after 1 s and logs it, where it had waited the whole shutdown grace, silently
(a tester of session 50: 5.6 s of a 5 s grace, 15.8 s of 15 s). Their flow-control windows are
filled as the tester filled them: a Watch told of 1,000 unloads and loads on a channel with a small
look-ahead, and reflection asked 300 times for a file of ~20 KB, neither read."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc as tg
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess
from tests.support.zoo_models import passthrough

# Alone, after the parallel phase (scripts/test.sh): it times a stop against its grace.
pytestmark = pytest.mark.serial

GRACE_S = 60.0
SMALL_WINDOW = [
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", 1024),
    ("grpc.use_local_subchannel_pool", 1),
]


def test_side_streams_whose_clients_stopped_reading_do_not_hold_the_stop(tmp_path: Path) -> None:
    write_model(tmp_path / "repo", "cyc", passthrough(tmp_path / "p.onnx"), None)
    server = ServerProcess(
        "--model-repository", str(tmp_path / "repo"), "--model-control-mode", "explicit",
        "--load-model", "cyc", "--shutdown-grace-s", str(GRACE_S),
    ).start()  # fmt: skip
    channels = [grpc.insecure_channel(server.address, options=SMALL_WINDOW) for _ in range(2)]
    try:
        watch = health_pb2_grpc.HealthStub(channels[0]).Watch(health_pb2.HealthCheckRequest(service="cyc"))
        ask = reflection_pb2.ServerReflectionRequest(file_containing_symbol="inference.GRPCInferenceService")
        reflect = reflection_pb2_grpc.ServerReflectionStub(channels[1]).ServerReflectionInfo(
            iter([ask] * 300)
        )
        client = tg.InferenceServerClient(server.address)
        try:
            for _ in range(1000):
                client.unload_model("cyc")
                client.load_model("cyc")
            assert client.is_server_live()  # the server serves on beside them
        finally:
            client.close()
        began = time.monotonic()
        assert server.terminate(timeout_s=GRACE_S + 10) == 0
        took = time.monotonic() - began
        server.wait_for_output(
            "2 side streams whose clients took no write for 1 s were left (health, reflection)"
        )
        assert took < GRACE_S / 2, f"the stop took {took:.1f} s of a {GRACE_S:.0f} s grace"
    finally:
        for channel in channels:
            channel.close()
        server.kill()
    del watch, reflect
