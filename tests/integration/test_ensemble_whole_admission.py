"""Over a real server: an ensemble request with a deadline is admitted whole, before any step runs
(server/models/ensemble_admission.py). Each step had been admitted alone as it started, so a first
step was computed for requests its second step then refused: every one of them where the two steps
did not fit the deadline together (a tester: 16 of 16), and under 2x overload of a model two steps
share 95% of that model's rows.

Step models are identity models sleeping a run (a sleep: CPU contention barely moves it), one
instance each; deadlines are the request's `timeout` parameter (the server's own deadline). The
assertions are outcomes: statuses, the step named, which requests a step model computed rows for,
and the order answers came in; never how long anything took.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import grpc
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.metrics_page import deadline_outcomes as outcomes
from tests.support.metrics_page import summed
from tests.support.server_process import ServerProcess, wait_until
from tests.support.slow_steps import chain_ensemble, slow_identity, write_repository
from tests.support.slow_steps import one_row as request

BOUND_S = 60.0  # generous upper bound for an answer that must come


def rows_computed(stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> int:
    """The rows `model` has computed (its ModelStatistics inference_count)."""
    answer = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=BOUND_S)
    return int(answer.model_stats[0].inference_count)


def refused(stub: pb_grpc.GRPCInferenceServiceStub, model: str, timeout_us: int) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request(model, timeout_us), timeout=BOUND_S)
    return caught.value


def test_a_request_whose_steps_cannot_end_by_its_deadline_is_refused_before_its_first_step(
    tmp_path: Path,
) -> None:
    """s1 -> s2, 500 ms a run each; a 600 ms deadline leaves room for either step, not for both
    (1010 ms with the two margins; the floor fades with age, halving in 5 s: fit for over 3 s after
    the runs that set it, and they run just before). Step 1 had been admitted and computed, every
    time, then step 2 refused."""
    models = {
        "s1": slow_identity("s1", 500),
        "s2": slow_identity("s2", 500),
        "ens": chain_ensemble("ens", ["s1", "s2"]),
    }
    repo = write_repository(tmp_path / "repo", models)
    with (
        ServerProcess("--model-repository", str(repo)) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stub.ModelInfer(request("ens"), timeout=BOUND_S)  # no deadline: both steps run, their costs known
        before = rows_computed(stub, "s1"), rows_computed(stub, "s2")
        for _ in range(3):
            unmet = refused(stub, "ens", 600_000)
            assert unmet.code() == grpc.StatusCode.DEADLINE_EXCEEDED, unmet.details()
            details = unmet.details() or ""
            assert details.startswith("in ensemble 'ens', deadline cannot be met: about "), details
            assert "step 1 (model 's1'): " in details and "; then step 2 (model 's2'): " in details, details
            assert details.endswith("; step 2 (model 's2')"), details  # the step that does not fit
        assert (rows_computed(stub, "s1"), rows_computed(stub, "s2")) == before  # neither step ran
        assert outcomes(server, "ens") == {"shed": 3, "expired": 0, "late": 0, "on_time": 1}
        assert outcomes(server, "s1") == {"shed": 0, "expired": 0, "late": 0, "on_time": 1}


def test_a_request_whose_later_step_would_not_fit_behind_the_work_ahead_is_shed_at_the_door(
    tmp_path: Path,
) -> None:
    """ens2 runs s twice (1500 ms a run, one row a batch). While s runs another request, a request
    with a 3150 ms deadline fits its first step behind it (at most 3000 ms), not its second: behind
    what is left of that run, its own first step and the turn the model may give newer work, it
    ends past 4500 ms less what was left. Its first step had been admitted and computed, its second
    then refused or dropped."""
    models = {"s": slow_identity("s", 1500, max_batch_size=1), "ens2": chain_ensemble("ens2", ["s", "s"], 1)}
    repo = write_repository(tmp_path / "repo", models)
    with (
        ServerProcess("--model-repository", str(repo)) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stub.ModelInfer(request("s"), timeout=BOUND_S)  # its cost known, just before
        busy = stub.ModelInfer.future(request("s"), timeout=BOUND_S)  # no deadline: s runs it
        wait_until(
            lambda: busy.done() or summed(server, 'sluiceway_batches_in_flight{model="s"') >= 1, "s's run"
        )
        shed = refused(stub, "ens2", 3_150_000)
        busy.result()
        assert shed.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, shed.details()
        details = shed.details() or ""
        assert details.startswith("in ensemble 'ens2', overloaded: about "), details
        assert details.endswith("; step 2 (model 's')"), details
        assert rows_computed(stub, "s") == 2  # the two direct requests, nothing of the one shed
        assert outcomes(server, "ens2") == {"shed": 1, "expired": 0, "late": 0, "on_time": 0}


def test_a_later_step_goes_before_work_that_came_after_its_request(tmp_path: Path) -> None:
    """ens2 runs s twice; s's runs wait at a gate the test opens, one run at a time (one row a
    batch). Request A (a deadline far off) has its first step held at the gate while three direct
    requests F1-F3 queue behind it. A's second step is queued after them, yet goes before the two
    of them its instance has not taken by then (it had gone last: the three ran first)."""
    gate = tmp_path / "run_gate"
    os.mkfifo(gate)
    held = f'parameters {{ key: "fault_run_gate" value: {{ string_value: "{gate}" }} }}'
    models = {
        "s": slow_identity("s", 0, held, max_batch_size=1),
        "ens2": chain_ensemble("ens2", ["s", "s"], 1),
    }
    repo = write_repository(tmp_path / "repo", models)
    order: list[str] = []
    lock = threading.Lock()

    def note(name: str) -> None:
        with lock:
            order.append(name)

    def answered() -> int:
        with lock:
            return len(order)

    with (
        ServerProcess("--model-repository", str(repo), "--allow-fault-injection") as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        calls = {"A": stub.ModelInfer.future(request("ens2", 60_000_000), timeout=BOUND_S)}
        server.wait_for_output("run 1 held until")  # A's first step, at the gate
        for name in ("F1", "F2", "F3"):
            calls[name] = stub.ModelInfer.future(request("s"), timeout=BOUND_S)
        queued = 'sluiceway_queue_requests{model="s"'
        wait_until(lambda: summed(server, queued) == 3, "F1-F3 queued")
        for name, call in calls.items():
            call.add_done_callback(lambda _, name=name: note(name))
        gate.open("wb").close()  # A's first step runs
        server.wait_for_output("run 2 held until")  # F1 (or A's second step), taken at once
        wait_until(lambda: summed(server, queued) == 3, "A's second step queued")
        for runs in range(1, 5):  # the four runs left, each answering one request
            gate.open("wb").close()
            wait_until(lambda runs=runs: answered() == runs, f"answer {runs}")
        for call in calls.values():
            call.result()
        assert order.index("A") < order.index("F2"), order
