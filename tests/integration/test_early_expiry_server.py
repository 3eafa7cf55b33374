"""Over a real server: a request that waits in a busy queue until no run could end before its
deadline is answered then, with the server's reason, before its client's own timer ends the call.

Answered at the server's copy of its deadline (later than its client's: gRPC sends the time left,
and the call takes time to arrive), such a request reached its client after the client's own timer
had fired, and the client saw gRPC's "Deadline Exceeded" instead of the server's words.

How the queue is kept busy without timing it: the model's one instance runs a model of ~100 ms a
batch (tests/support/models.py `slow_model`), and every third run hangs 1.5 s first (fault
injection). The first two runs teach the estimator a run's cost (two: a first run is slow); the
third holds the instance while the request under test waits behind it with a 1 s deadline:
admitted (the forecast expects the running batch to end in ~100 ms), then hopeless ~100 ms before
its deadline.
"""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import grpc
import numpy as np

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.models import slow_model
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess, wait_until

BOUND_S = 20.0  # generous upper bound for an answer that must come
CONFIG = """
max_batch_size: 4
dynamic_batching { }
instance_group [ { count: 1 kind: KIND_CPU } ]
parameters { key: "fault_hang_every" value: { string_value: "3" } }
parameters { key: "fault_hang_s" value: { string_value: "1.5" } }
"""
SERVERS_REASON = re.compile(
    r"^deadline cannot be met: about \d+\.\d ms of compute needed, \d+\.\d ms left, "
    r"while waiting in the queue$"
)


def request() -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name="slow",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 1])],
        raw_input_contents=[np.ones((1, 1), np.float32).tobytes()],
    )


def metrics(server: ServerProcess) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=30) as answer:
        return str(answer.read().decode())


def sample(text: str, prefix: str) -> float:
    return sum(float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix))


def test_a_request_that_can_no_longer_be_served_in_time_hears_the_servers_reason(tmp_path: Path) -> None:
    write_model(tmp_path / "repo", "slow", slow_model(tmp_path / "slow.onnx"), CONFIG)
    args = ("--model-repository", str(tmp_path / "repo"), "--allow-fault-injection")
    with ServerProcess(*args) as server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(2):  # runs 1 and 2: their cost is now known
            stub.ModelInfer(request(), timeout=BOUND_S)
        running = stub.ModelInfer.future(request(), timeout=BOUND_S)  # run 3: hangs 1.5 s first
        in_flight = 'sluiceway_batches_in_flight{model="slow",version="1"} '
        wait_until(lambda: running.done() or sample(metrics(server), in_flight) >= 1, "run 3 to start")
        assert not running.done(), f"run 3 ended at once: {running.exception()!r}"
        call = stub.ModelInfer.future(request(), timeout=1.0)
        try:
            call.result(timeout=BOUND_S)
            raise AssertionError("answered OK behind a 1.5 s run with a 1 s deadline")
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (err.code(), err.details())
            # The server's words, not gRPC's own "Deadline Exceeded" of the client's timer.
            assert SERVERS_REASON.match(err.details() or ""), err.details()
        running.result(timeout=BOUND_S)
        expired = 'sluiceway_deadline_outcome_total{model="slow",outcome="expired",version="1"} '
        wait_until(lambda: sample(metrics(server), expired) == 1, "the early answer counted expired")
