"""Over a real server: an ensemble call cut by its gRPC deadline (the client's timer: cancelled, no
error from a step) lands in one outcome of the ensemble's own `sluiceway_deadline_outcome_total`
series, as a direct call cut so does: its step in its run -> `late`, its step still queued ->
`expired`. It had been in none of the ensemble's outcomes (its steps counted theirs).

Each case has its own step model (an identity model sleeping a run, one instance) and ensemble, so
the cases share one server in any order. No run has ended when the call is cut, so no floor is
known: the server gives up at the deadline itself, which its client's timer reaches first by the
call's transit, so the cut usually wins; where the server's answer wins instead (a loaded client),
the queued case counts `expired` through the step's error, as before this fix. Exact counterparts,
on a fake clock: tests/unit/test_ensemble_cut_outcome.py.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.metrics_page import deadline_outcomes as outcomes
from tests.support.metrics_page import metrics_lines as metrics
from tests.support.metrics_page import summed
from tests.support.server_process import ServerProcess, wait_until
from tests.support.slow_steps import one_row as request
from tests.support.slow_steps import one_step_ensemble, slow_identity, write_repository

MODELS = {
    "in_run_step": slow_identity("in_run_step", 1500),
    "ens_in_run": one_step_ensemble("ens_in_run", "in_run_step"),
    "ens_queued": one_step_ensemble("ens_queued", "queued_step"),
}
BOUND_S = 30.0  # generous upper bound for an answer that must come


@dataclass
class Served:
    process: ServerProcess
    run_gate: Path  # queued_step's runs wait here until the test opens and closes it


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    where = tmp_path_factory.mktemp("cut_repo")
    gate = where / "run_gate"
    os.mkfifo(gate)
    # queued_step's run is held at a gate, not for a time: a first run that lasted 2.5, 5, then
    # 10 s had ended on a loaded machine before the ensemble's step queued behind it (a CI run
    # waited 60 s for `expired`); now it lasts until the test has seen the cut counted.
    held = f'parameters {{ key: "fault_run_gate" value: {{ string_value: "{gate}" }} }}'
    repo = write_repository(where / "repo", {**MODELS, "queued_step": slow_identity("queued_step", 0, held)})
    with ServerProcess("--model-repository", str(repo), "--allow-fault-injection") as started:
        yield Served(started, gate)


@pytest.fixture(scope="module")
def server(served: Served) -> ServerProcess:
    return served.process


@pytest.fixture()
def stub(server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def gauge(server: ServerProcess, name: str, model: str) -> float:
    return summed(server, f'{name}{{model="{model}"')


def cut(stub: pb_grpc.GRPCInferenceServiceStub, model: str, timeout_s: float) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request(model), timeout=timeout_s)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_an_ensemble_call_cut_at_its_deadline_during_its_steps_run_counts_late(
    server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    cut(stub, "ens_in_run", 0.3)  # its step's run takes 1.5 s
    wait_until(lambda: outcomes(server, "ens_in_run").get("late") == 1, "the ensemble's own `late`")
    assert outcomes(server, "ens_in_run") == {"shed": 0, "expired": 0, "late": 1, "on_time": 0}
    # The protocol's own count of the cut (CALL_DEADLINE_PASSED) agrees: a failure, not a cancel.
    reasons = {
        m.split('reason="')[1].split('"')[0]: float(m.rsplit(" ", 1)[1])
        for m in metrics(server)
        if m.startswith('nv_inference_request_failure{model="ens_in_run"')
    }
    assert reasons.get("REJECTED") == 1 and reasons.get("CANCELED", 0) == 0, reasons
    wait_until(lambda: outcomes(server, "in_run_step").get("late") == 1, "the step's run to end, late")
    assert outcomes(server, "in_run_step") == {"shed": 0, "expired": 0, "late": 1, "on_time": 0}


def test_an_ensemble_call_cut_at_its_deadline_while_its_step_is_queued_counts_expired(
    served: Served, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    server = served.process
    answered: list[pb.ModelInferResponse] = []
    first = threading.Thread(
        target=lambda: answered.append(stub.ModelInfer(request("queued_step"), timeout=BOUND_S)), daemon=True
    )
    first.start()  # held at the gate on the step's one instance, no deadline
    try:
        server.wait_for_output("run 1 held until")  # the first run is in flight
        cut(stub, "ens_queued", 0.4)  # its step waits in the queue behind that run
        wait_until(lambda: outcomes(server, "ens_queued").get("expired") == 1, "the ensemble's own `expired`")
        assert outcomes(server, "ens_queued") == {"shed": 0, "expired": 1, "late": 0, "on_time": 0}
    finally:
        served.run_gate.open("wb").close()  # the first run goes on (its run thread opened the gate)
    first.join(BOUND_S)
    assert len(answered) == 1
    # the step counts its own cut in the queue, once (and the first request on time)
    assert outcomes(server, "queued_step") == {"shed": 0, "expired": 1, "late": 0, "on_time": 1}
