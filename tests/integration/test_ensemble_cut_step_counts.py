"""Over a real server: an ensemble request whose gRPC deadline cuts the call while its step runs
counts the step as a direct call cut the same way counts it: `fail` +1 beside the `late` its run
counts (the step had counted CANCELED, not a failure: late exceeded fail on the step).

The step is an identity model sleeping 600 ms a run; the call's gRPC deadline is 200 ms, and the
step's first run is admitted (no run time known yet).
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.server_process import ServerProcess, wait_until

STEP = """
name: "slow"
backend: "identity"
max_batch_size: 4
input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]
dynamic_batching { }
instance_group [ { count: 1 kind: KIND_CPU } ]
parameters { key: "execute_delay_ms" value: { string_value: "600" } }
"""
ENSEMBLE = """
name: "ens"
platform: "ensemble"
max_batch_size: 4
input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]
ensemble_scheduling { step [
  { model_name: "slow" model_version: -1
    input_map { key: "x" value: "x" } output_map { key: "y" value: "y" } }
] }
"""


def metric(server: ServerProcess, prefix: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=30) as answer:
        lines = answer.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(prefix))


def test_a_step_cut_by_the_ensembles_grpc_deadline_counts_fail_with_its_late(tmp_path: Path) -> None:
    for name, config in (("slow", STEP), ("ens", ENSEMBLE)):
        (tmp_path / "repo" / name / "1").mkdir(parents=True)
        (tmp_path / "repo" / name / "config.pbtxt").write_text(config)
    with (
        ServerProcess("--model-repository", str(tmp_path / "repo")) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(
            model_name="ens",
            inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 1])],
            raw_input_contents=[np.ones((1, 1), np.float32).tobytes()],
        )
        with pytest.raises(grpc.RpcError) as cut:
            stub.ModelInfer(request, timeout=0.2)
        assert cut.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

        late = 'sluiceway_deadline_outcome_total{model="slow",outcome="late"'
        wait_until(lambda: metric(server, late) == 1, "the step's run to end, late")

        def step() -> pb.InferStatistics:
            answer = stub.ModelStatistics(pb.ModelStatisticsRequest(name="slow"), timeout=30)
            return answer.model_stats[0].inference_stats

        stats = step()  # counted when the call was cut, before its run ended
        assert (stats.success.count, stats.fail.count) == (0, 1)
        reasons = 'nv_inference_request_failure{model="slow",reason="'
        assert metric(server, reasons + 'REJECTED"') == 1
        assert metric(server, reasons + 'CANCELED"') == 0
        # The ensemble counts its own request once, as before.
        ens = stub.ModelStatistics(pb.ModelStatisticsRequest(name="ens"), timeout=30).model_stats[0]
        assert (ens.inference_stats.success.count, ens.inference_stats.fail.count) == (0, 1)
