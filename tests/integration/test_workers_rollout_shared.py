"""`--workers 2`: an automatic rollback decided by one worker is followed by the other.

Each worker judged its own traffic and rolled back on its own: connections reaching a worker that
had not seen the failures went on getting the failing canary, and RolloutStatus depended on the
connection. Here all the load goes to one worker; the other, given no traffic at all, must still
take the canary out (server/models/rollout_share.py).
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack

import grpc
import numpy as np
import pytest

from loadtest.worker_channels import channels_to_each_worker
from protos import admin_pb2 as apb
from protos import admin_pb2_grpc as apb_grpc
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.models import scale_model
from tests.support.server_process import ServerProcess, wait_until

MAX_REQUESTS = 2000  # the load loop stops here at the latest
X = np.arange(4, dtype=np.float32).reshape(1, 4) + 1
CONFIG = """
max_batch_size: 8
dynamic_batching { }
instance_group [ { count: 1 kind: KIND_CPU } ]
version_policy { all { } }
""" + "\n".join(
    f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}'
    for k, v in {
        "traffic_weights": "1:50,2:50",
        "rollback_window_s": "0.5",
        "rollback_min_requests": "10",
        "rollback_error_margin": "0.1",
        "fault_versions": "2",
        "fault_raise_every": "2",  # half of version 2's runs fail
    }.items()
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("workers-rollout")
    for version in (1, 2):
        (repo / "wf" / str(version)).mkdir(parents=True)
        scale_model(repo / "wf" / str(version) / "model.onnx", float(version))
    (repo / "wf" / "config.pbtxt").write_text(CONFIG)
    args = ["--model-repository", str(repo), "--allow-fault-injection", "--workers", "2"]
    with ServerProcess(*args, "--shutdown-grace-s", "1") as process:
        yield process


def status(channel: grpc.Channel) -> apb.RolloutStatusResponse:
    return apb_grpc.AdminStub(channel).RolloutStatus(apb.RolloutStatusRequest(model="wf"), timeout=30)


def infer(channel: grpc.Channel, request_id: str) -> int | None:
    """The version that answered, or None when the request failed (version 2's injected faults)."""
    request = pb.ModelInferRequest(
        model_name="wf",
        id=request_id,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 4])],
        raw_input_contents=[X.tobytes()],
    )
    try:
        answer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.INTERNAL, err  # an injected fault
        return None
    y = np.frombuffer(answer.raw_output_contents[0], np.float32)
    return round(float(y[0] / X[0, 0]))


def rollbacks(text: str) -> dict[str, float]:
    """trigger -> count of wf version 2's rollbacks in a worker's /metrics."""
    found = re.findall(r'sluiceway_rollbacks_total\{model="wf",trigger="(\w+)",version="2"\} (\S+)', text)
    return {trigger: float(count) for trigger, count in found}


def test_a_rollback_one_worker_decides_is_followed_by_the_other(server: ServerProcess) -> None:
    with ExitStack() as stack:
        workers = channels_to_each_worker(server.address, 2, stack, "wf")
        loaded, idle = workers["0"], workers["1"]
        versions = [v.role for v in status(idle).versions]
        assert versions == ["stable", "candidate"], versions
        sent = 0  # every request to worker 0 only, until its window rolls version 2 back
        while status(loaded).versions[1].weight > 0:
            assert sent < MAX_REQUESTS, f"worker 0 did not roll version 2 back after {sent} requests"
            for _ in range(20):
                infer(loaded, f"load-{sent}")
                sent += 1
        assert status(loaded).events[0].trigger == "auto"

        # Worker 1 saw none of it, and follows within its next check (every 0.5 s).
        wait_until(lambda: status(idle).versions[1].weight == 0, "worker 1 to roll version 2 back", 15)
        followed = status(idle)
        assert followed.worker == "1" and followed.source == "rollback" and followed.versions[1].rolled_back
        assert [v.role for v in followed.versions] == ["stable", "off"]
        event = followed.events[0]
        assert event.version == 2 and event.trigger == "shared"
        assert event.reason.startswith("rollback from worker 0: error rate")
        assert followed.rollbacks == 1 == status(loaded).rollbacks
        assert {infer(idle, f"after-{i}") for i in range(20)} == {1}  # never the failing canary

    ports = [int(p) for p in re.findall(r"sluiceway metrics on [\d.]+:(\d+)/metrics", server.output())]
    counts = []
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
            counts.append(rollbacks(answer.read().decode()))
    # Each worker counts its own: the decision once ("auto"), the following once ("shared").
    assert sorted(counts, key=str) == [{"auto": 1.0}, {"shared": 1.0}], counts
