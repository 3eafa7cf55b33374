"""Over a real server: a request whose deadline passes after its batch was formed, before the batch
boards its instance, is answered DEADLINE_EXCEEDED and never computed (batcher/run_batch.py
`_board`). Under overload such a request is counted `late` whether or not the boarding check runs,
so this had only unit and mutation tests.

The gap between formation and boarding is made wide on purpose: the instance's second run hangs
past `run_timeout_s`, the watchdog fails it and replaces the instance, and the replacement waits at
a FIFO gate (`fault_replace_gate`) for as long as the test wants. The request queued behind the
hung run is formed into a batch as soon as that run's slot is free, and its run waits for the new
instance. Its own `timeout` (the server's deadline, not the client's: a call cut by its client is
never computed either way) passes there. Without the boarding check it would be computed on the
fresh instance and answered late.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import grpc
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.metrics_page import deadline_outcomes as outcomes
from tests.support.metrics_page import summed
from tests.support.server_process import ServerProcess, wait_until
from tests.support.slow_steps import one_row, slow_identity, write_repository

BOUND_S = 30.0  # generous upper bound for an answer that must come
DEADLINE_S = 1.0  # the request under test's own `timeout`


def _faults(gate: Path) -> str:
    return "\n".join(
        f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}'
        for key, value in (
            ("fault_hang_every", "2"),  # the second run hangs (a replaced instance counts from 1)
            ("run_timeout_s", "0.5"),
            ("fault_replace_gate", str(gate)),
        )
    )


def _stats(stub: pb_grpc.GRPCInferenceServiceStub) -> pb.ModelStatistics:
    return stub.ModelStatistics(pb.ModelStatisticsRequest(name="board"), timeout=BOUND_S).model_stats[0]


def test_a_request_past_its_deadline_when_its_batch_boards_is_never_computed(tmp_path: Path) -> None:
    gate = tmp_path / "replace_gate"
    os.mkfifo(gate)
    repo = write_repository(tmp_path / "repo", {"board": slow_identity("board", 0, _faults(gate))})
    # Two batches in flight: the hung run's task holds its slot while the replacement waits, and
    # the request under test takes the other (with one, it would wait in the queue, and expire there).
    args = ("--model-repository", str(repo), "--allow-fault-injection", "--max-batches-in-flight", "2")
    errors: dict[str, grpc.RpcError] = {}
    with ServerProcess(*args) as server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def call(name: str, request: pb.ModelInferRequest) -> None:
            try:
                stub.ModelInfer(request, timeout=BOUND_S)
            except grpc.RpcError as err:
                errors[name] = err

        stub.ModelInfer(one_row("board"), timeout=BOUND_S)  # run 1
        hung = threading.Thread(target=call, args=("hung", one_row("board")), daemon=True)
        late = threading.Thread(
            target=call, args=("late", one_row("board", int(DEADLINE_S * 1e6))), daemon=True
        )
        try:
            hung.start()  # run 2: hangs; at 0.5 s the watchdog fails it and replaces the instance
            hung.join(BOUND_S)
            assert "hung" in errors, "run 2 was answered"
            server.wait_for_output("instance 0 replaced held until")  # the replacement waits
            # Run 2's batch has landed (failed), though its task holds its slot through the replacement.
            assert summed(server, 'sluiceway_batches_in_flight{model="board"') == 0
            sent = time.monotonic()
            late.start()  # formed into a batch at once (the other slot): its run waits for the instance
            wait_until(lambda: summed(server, 'sluiceway_batches_in_flight{model="board"') == 1, "formed")
            assert summed(server, 'nv_inference_pending_request_count{model="board"') == 0
            wait_until(lambda: time.monotonic() > sent + DEADLINE_S + 0.2, "its deadline to pass")
            assert late.is_alive(), errors.get("late")  # not answered while its batch waits
        finally:
            gate.open("wb").close()  # the replacement goes on
        late.join(BOUND_S)
        assert not late.is_alive()
        err = errors["late"]
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (err.code(), err.details())
        assert "deadline exceeded while waiting in the queue" in (err.details() or ""), err.details()
        assert outcomes(server, "board") == {"shed": 0, "expired": 1, "late": 0, "on_time": 1}
        assert _stats(stub).inference_count == 1  # run 1's row; run 2 hung, the late request never ran
        stub.ModelInfer(one_row("board"), timeout=BOUND_S)  # the fresh instance serves
        assert _stats(stub).inference_count == 2


pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
