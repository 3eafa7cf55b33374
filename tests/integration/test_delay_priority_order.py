"""Over a real server: a request past its level's DELAY queue timeout goes behind the requests of
its own priority level still in time, never behind a lower level, as Triton's PriorityQueue (level by
level; within a level the main queue before the delayed one). It had gone behind every request in
time: a delayed priority-1 request ran after every priority-2 one (B0, L1, L2, L3, L4, H).

One instance, one row a run, each run held at a gate the test opens: the order the requests are
answered in is the order they were formed in, with no timing in it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import grpc

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.metrics_page import summed
from tests.support.server_process import ServerProcess, wait_until
from tests.support.slow_steps import one_row, write_repository

BOUND_S = 30.0  # generous upper bound for an answer that must come

# Level 1 delays after 10 s, a request's own `timeout` may shorten that; level 2 (the default) has
# no timeout. Every run waits at the gate.
CONFIG = """
name: "delayed"
backend: "identity"
max_batch_size: 1
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 1 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 1 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
dynamic_batching {{
  priority_levels: 2 default_priority_level: 2
  priority_queue_policy {{ key: 1 value {{
    timeout_action: DELAY default_timeout_microseconds: 10000000 allow_timeout_override: true }} }}
}}
parameters {{ key: "fault_run_gate" value: {{ string_value: "{gate}" }} }}
"""


def sent(rid: str, priority: int | None = None, timeout_us: int | None = None) -> pb.ModelInferRequest:
    request = one_row("delayed", timeout_us)
    request.id = rid
    if priority is not None:
        request.parameters["priority"].int64_param = priority
    return request


def answers(answered: list[str], count: int) -> Callable[[], bool]:
    return lambda: len(answered) >= count


def test_a_delayed_request_goes_behind_its_own_level_only(tmp_path: Path) -> None:
    gate = tmp_path / "run_gate"
    os.mkfifo(gate)
    repo = write_repository(tmp_path / "repo", {"delayed": CONFIG.format(gate=gate)})
    answered: list[str] = []
    lock = threading.Lock()

    def note(call: grpc.Future) -> None:
        with lock:
            answered.append(call.result().id)

    args = ("--model-repository", str(repo), "--allow-fault-injection")
    with ServerProcess(*args) as server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        calls = [stub.ModelInfer.future(sent("B0"), timeout=BOUND_S)]  # level 2, held at the gate
        calls[0].add_done_callback(note)
        server.wait_for_output("run 1 held until")
        # H_late's 1 us override of its level's DELAY timeout has passed when it is formed; H's 10 s
        # has not. The L requests are level 2 (the default).
        queued = [sent("H_late", 1, timeout_us=1), sent("L1"), sent("H", 1), sent("L2", 2), sent("L3")]
        for request in queued:
            calls.append(stub.ModelInfer.future(request, timeout=BOUND_S))
            calls[-1].add_done_callback(note)
        wait_until(
            lambda: summed(server, 'sluiceway_queue_requests{model="delayed"') == len(queued),
            "every request queued behind the held run",
        )
        for run in range(1, len(calls) + 1):  # one run at a time: answered in the order formed
            server.wait_for_output(f"run {run} held until")
            gate.open("wb").close()
            wait_until(answers(answered, run), f"run {run}'s answer")
        for call in calls:
            assert call.result(timeout=BOUND_S).id
    # Level 1 first, its delayed request after its request in time; then level 2 in arrival order.
    assert answered == ["B0", "H", "H_late", "L1", "L2", "L3"]
