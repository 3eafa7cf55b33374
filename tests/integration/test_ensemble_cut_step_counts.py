"""Over a real server: an ensemble request whose gRPC deadline cuts the call while its step runs
counts the step as a direct call cut the same way counts it: `fail` +1 beside the `late` its run
counts (the step had counted CANCELED, not a failure: late exceeded fail on the step).

The step is an identity model sleeping 600 ms a run; the call's gRPC deadline is 200 ms, and the
step's first run is admitted (no run time known yet).
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.metrics_page import summed as metric
from tests.support.server_process import ServerProcess, wait_until
from tests.support.slow_steps import one_row, one_step_ensemble, slow_identity, write_repository

MODELS = {"slow": slow_identity("slow", 600), "ens": one_step_ensemble("ens", "slow")}


def test_a_step_cut_by_the_ensembles_grpc_deadline_counts_fail_with_its_late(tmp_path: Path) -> None:
    repo = write_repository(tmp_path / "repo", MODELS)
    with (
        ServerProcess("--model-repository", str(repo)) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = one_row("ens")
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
