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

import threading
import urllib.request
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.server_process import ServerProcess, wait_until

STEP = """
name: "{name}"
backend: "identity"
max_batch_size: 4
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 1 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 1 ] }} ]
dynamic_batching {{ }}
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
parameters {{ key: "execute_delay_ms" value: {{ string_value: "{delay_ms}" }} }}
"""
ENSEMBLE = """
name: "{name}"
platform: "ensemble"
max_batch_size: 4
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 1 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 1 ] }} ]
ensemble_scheduling {{ step [
  {{ model_name: "{step}" model_version: -1
    input_map {{ key: "x" value: "x" }} output_map {{ key: "y" value: "y" }} }}
] }}
"""
MODELS = {
    "in_run_step": STEP.format(name="in_run_step", delay_ms=1500),
    "ens_in_run": ENSEMBLE.format(name="ens_in_run", step="in_run_step"),
    "queued_step": STEP.format(name="queued_step", delay_ms=2500),
    "ens_queued": ENSEMBLE.format(name="ens_queued", step="queued_step"),
}
BOUND_S = 30.0  # generous upper bound for an answer that must come


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("cut_repo")
    for name, config in MODELS.items():
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(config)
    with ServerProcess("--model-repository", str(repo)) as started:
        yield started


@pytest.fixture()
def stub(server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def request(model: str) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name=model,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 1])],
        raw_input_contents=[np.ones((1, 1), np.float32).tobytes()],
    )


def metrics(server: ServerProcess) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=30) as answer:
        return list(answer.read().decode().splitlines())


def outcomes(server: ServerProcess, model: str) -> dict[str, float]:
    prefix = f'sluiceway_deadline_outcome_total{{model="{model}",outcome="'
    return {
        line[len(prefix) :].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics(server)
        if line.startswith(prefix)
    }


def gauge(server: ServerProcess, name: str, model: str) -> float:
    prefix = f'{name}{{model="{model}"'
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics(server) if line.startswith(prefix))


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
    server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    answered: list[pb.ModelInferResponse] = []
    first = threading.Thread(
        target=lambda: answered.append(stub.ModelInfer(request("queued_step"), timeout=BOUND_S)), daemon=True
    )
    first.start()  # runs 2.5 s on the step's one instance, no deadline
    wait_until(lambda: gauge(server, "sluiceway_batches_in_flight", "queued_step") == 1, "the first run")
    cut(stub, "ens_queued", 0.4)  # its step waits in the queue behind that run
    wait_until(lambda: outcomes(server, "ens_queued").get("expired") == 1, "the ensemble's own `expired`")
    assert outcomes(server, "ens_queued") == {"shed": 0, "expired": 1, "late": 0, "on_time": 0}
    first.join(BOUND_S)
    assert len(answered) == 1
    # the step counts its own cut in the queue, once (and the first request on time)
    assert outcomes(server, "queued_step") == {"shed": 0, "expired": 1, "late": 0, "on_time": 1}
