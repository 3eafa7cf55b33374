"""Over a real server: an ensemble request with a deadline lands in exactly one outcome of the
ensemble's own `sluiceway_deadline_outcome_total` series, from what ended it (a step computed past
the deadline -> late; refused at the ensemble's admission, its deadline not to be met or its steps
overloaded -> shed, as a direct request refused at its model's admission); its step's series counts
the step's own outcome, once. The ensemble's series had counted only `on_time` (tester: shed 0,
expired 0, late 0 while ModelStatistics fail +3).

The step is an identity model sleeping 800 ms a run (a sleep: CPU contention barely moves it), on
one instance. Deadlines are the request's `timeout` parameter (the server's deadline; a gRPC
deadline would end the call on the client's timer instead of letting the server answer):
1. late: 100 ms, the step's first run (no cost known: admitted), computed in 800 ms;
2. cannot be met: 100 ms again, now that a run of 800 ms was seen (refused at the ensemble's
   admission: the step never sees it; it had been refused at the step's own, counted `expired`);
3. shed: 850 ms, while the step's instance runs another request: its own run would fit (805 ms),
   not behind what is left of the running one (shed while more than 50 ms of it is left, so the
   request must arrive within ~750 ms of that run's start: a wide margin on a loaded machine).
A step refused or dropped for its deadline after its ensemble's admission counts `expired`
(tests/integration/test_deadline_outcomes_cut.py, tests/unit/test_ensemble_cut_outcome.py).
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import grpc
import pytest

from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.metrics_page import deadline_outcomes as outcomes
from tests.support.server_process import ServerProcess, wait_until
from tests.support.slow_steps import one_row as request
from tests.support.slow_steps import one_step_ensemble, slow_identity, write_repository

BOUND_S = 20.0  # generous upper bound for an answer that must come
MODELS = {"s1": slow_identity("s1", 800), "ens": one_step_ensemble("ens", "s1")}


def refused(stub: pb_grpc.GRPCInferenceServiceStub, timeout_us: int) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request("ens", timeout_us), timeout=BOUND_S)
    return caught.value


def test_each_failed_ensemble_request_lands_in_one_outcome_of_its_own(tmp_path: Path) -> None:
    repo = write_repository(tmp_path / "repo", MODELS)
    with (
        ServerProcess("--model-repository", str(repo)) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        late = refused(stub, 100_000)
        assert late.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "while the request was being computed" in (late.details() or "")

        unmet = refused(stub, 100_000)
        assert unmet.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "deadline cannot be met" in (unmet.details() or "")

        busy = stub.ModelInfer.future(request("s1"), timeout=BOUND_S)  # holds s1's instance
        in_flight = 'sluiceway_batches_in_flight{model="s1",version="1"} '

        def running() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=30) as m:
                return any(
                    line.startswith(in_flight) and float(line.split(" ")[-1]) >= 1
                    for line in m.read().decode().splitlines()
                )

        wait_until(lambda: busy.done() or running(), "s1's run to start")
        shed = refused(stub, 850_000)
        assert shed.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, shed.details()
        busy.result()

        assert outcomes(server, "ens") == {"shed": 2, "expired": 0, "late": 1, "on_time": 0}
        # The step's own series: each of its requests once (the two refused never reached it).
        assert outcomes(server, "s1") == {"shed": 0, "expired": 0, "late": 1, "on_time": 1}
