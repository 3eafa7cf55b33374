"""Over a real server: a preserve_ordering answer waits for the answers ahead of it only within its
own deadline. Computed (here a response-cache hit, answered without a run) while an earlier request
of the model is still computing (its run held at a gate the test opens), its deadline passes while
it waits: it is answered DEADLINE_EXCEEDED then, counted `late` (not `on_time`), and the answers
after it still wait for the ones before it. It had been answered OK after its `timeout` (once the
earlier one was), and one cut by its gRPC deadline while it waited had been counted a success and
`on_time` (4 of 4 each).

Every run waits at its model's gate until the test opens it, so nothing here is timed: the earlier
request computes for as long as the test wants.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.metrics_page import deadline_outcomes as outcomes
from tests.support.server_process import ServerProcess, wait_until
from tests.support.slow_steps import write_repository

BOUND_S = 30.0  # generous upper bound for an answer that must come
CACHED = 7.0  # the input whose answer the response cache holds once primed
MODELS = ("by_timeout", "by_deadline", "on_stream")


def ordered(name: str, gate: Path) -> str:
    return f"""
name: "{name}"
backend: "identity"
max_batch_size: 1
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 1 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 1 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
dynamic_batching {{ preserve_ordering: true }}
response_cache {{ enable: true }}
parameters {{ key: "fault_run_gate" value: {{ string_value: "{gate}" }} }}
"""


@dataclass
class Served:
    process: ServerProcess
    gates: dict[str, Path]  # each model's runs wait at its gate until the test opens and closes it


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    where = tmp_path_factory.mktemp("ordered_deadlines")
    gates = {name: where / f"{name}_gate" for name in MODELS}
    for gate in gates.values():
        os.mkfifo(gate)
    repo = write_repository(where / "repo", {name: ordered(name, gates[name]) for name in MODELS})
    with ServerProcess("--model-repository", str(repo), "--allow-fault-injection") as process:
        yield Served(process, gates)


@pytest.fixture()
def stub(served: Served) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(served.process.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def one(model: str, x: float, rid: str, timeout_us: int | None = None) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, id=rid)
    request.inputs.add(name="x", datatype="FP32", shape=[1, 1])
    request.raw_input_contents.append(np.float32([[x]]).tobytes())
    if timeout_us is not None:
        request.parameters["timeout"].int64_param = timeout_us
    return request


def open_gate(served: Served, model: str, run: int) -> None:
    """Let run `run` of `model` (held at its gate) go on."""
    served.process.wait_for_output(f"run {run} held until {served.gates[model]}")
    served.gates[model].open("wb").close()


def prime(served: Served, stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> None:
    """Run 1 computes CACHED's answer: the response cache holds it from then on."""
    call = stub.ModelInfer.future(one(model, CACHED, "prime"), timeout=BOUND_S)
    open_gate(served, model, 1)
    call.result(timeout=BOUND_S)


def held(served: Served, stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> grpc.Future:
    """An earlier request of `model` computing (run 2, held at the gate) until the test opens it."""
    call = stub.ModelInfer.future(one(model, 1.0, "earlier"), timeout=BOUND_S)
    served.process.wait_for_output(f"run 2 held until {served.gates[model]}")
    return call


def test_an_answer_whose_timeout_passes_while_it_waits_its_turn_is_deadline_exceeded(
    served: Served, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    model = "by_timeout"
    prime(served, stub, model)
    earlier = held(served, stub, model)
    try:
        late = stub.ModelInfer.future(one(model, CACHED, "late", timeout_us=200_000), timeout=BOUND_S)
        with pytest.raises(grpc.RpcError) as caught:
            late.result(timeout=BOUND_S)  # it had waited for `earlier`, then been answered OK
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, caught.value.details()
        assert "preserve_ordering" in (caught.value.details() or "")
        assert not earlier.done()  # answered while the earlier request still computes
    finally:
        open_gate(served, model, 2)
    assert earlier.result(timeout=BOUND_S).id == "earlier"
    assert outcomes(served.process, model) == {"shed": 0, "expired": 0, "late": 1, "on_time": 2}


def test_an_answer_cut_by_its_grpc_deadline_while_it_waits_its_turn_counts_late(
    served: Served, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    model = "by_deadline"
    prime(served, stub, model)
    earlier = held(served, stub, model)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(one(model, CACHED, "late"), timeout=0.2)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The server's answer or the client's timer, whichever came first: `late` either way (it
        # had been counted a success and `on_time`).
        wait_until(lambda: outcomes(served.process, model).get("late") == 1, "the cut answer counted late")
        assert not earlier.done()
    finally:
        open_gate(served, model, 2)
    assert earlier.result(timeout=BOUND_S).id == "earlier"
    assert outcomes(served.process, model) == {"shed": 0, "expired": 0, "late": 1, "on_time": 2}


def test_on_a_stream_the_late_answer_goes_at_its_deadline_and_the_next_still_waits_its_turn(
    served: Served, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    model = "on_stream"
    prime(served, stub, model)
    sent: queue.Queue[pb.ModelInferRequest | None] = queue.Queue()
    answers: queue.Queue[pb.ModelStreamInferResponse] = queue.Queue()
    stream = stub.ModelStreamInfer(iter(sent.get, None), timeout=BOUND_S)
    reader = threading.Thread(target=lambda: [answers.put(a) for a in stream], daemon=True)
    reader.start()
    try:
        sent.put(one(model, 1.0, "earlier"))
        served.process.wait_for_output(f"run 2 held until {served.gates[model]}")
        sent.put(one(model, CACHED, "late", timeout_us=200_000))
        sent.put(one(model, CACHED, "after"))  # a cache hit too, no deadline: it waits its turn
        first = answers.get(timeout=BOUND_S)  # it had waited for "earlier"
        assert first.infer_response.id == "late"
        assert first.error_message.startswith("DEADLINE_EXCEEDED: "), first.error_message
        assert answers.empty()  # "after" waits for "earlier", behind the late one
    finally:
        open_gate(served, model, 2)
        sent.put(None)
    rest = [answers.get(timeout=BOUND_S) for _ in range(2)]
    assert [(a.infer_response.id, a.error_message) for a in rest] == [("earlier", ""), ("after", "")]
    reader.join(BOUND_S)
    assert outcomes(served.process, model) == {"shed": 0, "expired": 0, "late": 1, "on_time": 3}
