"""Triton's dynamic batching rules, idle dispatch, priorities and stream ordering, over a real server.

Queue delays here are long (60 s) so that a request that waited for them would show as a call
that does not complete within a generous bound; no test measures how fast anything is.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.metrics_page import metrics_lines, summed
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess, wait_until

LONG_DELAY_US = 60_000_000  # a 60 s max_queue_delay: waiting for it would fail every bound below
BOUND_S = 20.0  # generous upper bound for a call that must not wait for the queue delay

PREFERRED_2_6 = """
max_batch_size: 8
dynamic_batching { preferred_batch_size: [ 2, 6 ] max_queue_delay_microseconds: {delay} }
instance_group [ { count: 1 kind: KIND_CPU } ]
"""
TWO_INSTANCES_IDLE = f"""
max_batch_size: 8
dynamic_batching {{ max_queue_delay_microseconds: {LONG_DELAY_US} }}
instance_group [ {{ count: 2 kind: KIND_CPU }} ]
parameters {{ key: "idle_dispatch" value: {{ string_value: "true" }} }}
"""
ORDERED = """
max_batch_size: 8
dynamic_batching { preserve_ordering: true }
instance_group [ { count: 2 kind: KIND_CPU } ]
"""


@pytest.fixture(scope="module")
def rules_server(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("rules")
    mlp = demo_repo / "mlp" / "1" / "model.onnx"
    write_model(repo, "pref26", mlp, PREFERRED_2_6.replace("{delay}", str(LONG_DELAY_US)))
    write_model(repo, "pref26_3s", mlp, PREFERRED_2_6.replace("{delay}", "3000000"))
    write_model(repo, "idle2", mlp, TWO_INSTANCES_IDLE)
    write_model(repo, "ordered", mlp, ORDERED)
    write_model(repo, "mlp", mlp, (demo_repo / "mlp" / "config.pbtxt").read_text())
    with ServerProcess("--model-repository", str(repo)) as server:
        yield server


@pytest.fixture()
def stub(rules_server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(rules_server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def infer_request(model: str, rows: int, rid: str = "", **params: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(
        model_name=model,
        id=rid,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[rows, 64])],
        raw_input_contents=[np.full((rows, 64), 0.5, np.float32).tobytes()],
    )
    for name, value in params.items():
        if value >= 2**63:
            request.parameters[name].uint64_param = value
        else:
            request.parameters[name].int64_param = value
    return request


def batch_sizes(stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> dict[int, int]:
    """Executions per batch size, from the server's statistics."""
    stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=30).model_stats[0]
    return {b.batch_size: b.compute_infer.count for b in stats.batch_stats}


def test_a_batch_at_a_smaller_preferred_size_runs_at_once(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    # Triton runs a pending batch that equals any preferred size at once; not only the largest.
    # No gRPC deadline: only the queue delay (60 s) could hold it, and the bound is 20 s.
    answer = stub.ModelInfer.future(infer_request("pref26", 2)).result(timeout=BOUND_S)
    assert answer.outputs[0].shape == [2, 2]
    assert batch_sizes(stub, "pref26") == {2: 1}


def test_requests_below_a_preferred_size_run_as_one_batch_when_the_delay_expires(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    # 1 + 3 rows reach no preferred size (2 and 6): both wait for the 3 s delay, then run as one
    # batch of 4, as in Triton (not cut to {1} and {3}).
    first = stub.ModelInfer.future(infer_request("pref26_3s", 1))
    second = stub.ModelInfer.future(infer_request("pref26_3s", 3))
    assert first.result(timeout=BOUND_S).outputs[0].shape == [1, 2]
    assert second.result(timeout=BOUND_S).outputs[0].shape == [3, 2]
    assert batch_sizes(stub, "pref26_3s") == {4: 1}


def test_idle_dispatch_answers_a_lone_request_on_an_idle_multi_instance_model(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    for _ in range(3):  # the first may go through an executor (its cost unknown), later ones inline
        answer = stub.ModelInfer.future(infer_request("idle2", 1)).result(timeout=BOUND_S)
        assert answer.outputs[0].shape == [1, 2]
    assert batch_sizes(stub, "idle2") == {1: 3}


@pytest.mark.parametrize("priority", [1, 2, 7, 2**63 - 1, 2**64 - 1])
def test_a_priority_the_model_lacks_is_served_at_its_default_level(
    stub: pb_grpc.GRPCInferenceServiceStub, priority: int
) -> None:
    # As Triton: 0 or a level above priority_levels means the model's default level (mlp has one).
    answer = stub.ModelInfer(infer_request("mlp", 1, priority=priority), timeout=30)
    assert answer.outputs[0].shape == [1, 2]


def test_a_negative_priority_is_invalid_argument_naming_it(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(infer_request("mlp", 1, priority=-1), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "priority" in (err.value.details() or "")


def test_a_stream_answers_a_preserve_ordering_model_in_request_order(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    # Two instances and mixed batch sizes finish out of order; preserve_ordering keeps request
    # order, for failed requests (too many rows, at 9) too, and every request is answered once.
    rows = [1 + (i * 5) % 8 for i in range(200)]
    requests = [infer_request("ordered", 9 if i % 37 == 5 else r, str(i)) for i, r in enumerate(rows)]
    answers = list(stub.ModelStreamInfer(iter(requests), timeout=120))
    assert [a.infer_response.id for a in answers] == [str(i) for i in range(len(requests))]
    for i, answer in enumerate(answers):
        if i % 37 == 5:
            assert answer.error_message.startswith("INVALID_ARGUMENT")
        else:
            assert not answer.error_message
            assert answer.infer_response.outputs[0].shape == [rows[i], 2]


ORDERED_SLOW_SECOND = """
backend: "identity"
max_batch_size: 1
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
instance_group [ { count: 2 kind: KIND_CPU } ]
dynamic_batching { preserve_ordering: true }
parameters { key: "execute_delay_ms" value { string_value: "1000" } }
parameters { key: "instance_wise_delay_multiplier" value { string_value: "3" } }
"""
HALF_A_RUN_S = 0.5  # the fast instance's run is 1 s


def test_unary_calls_to_a_preserve_ordering_model_are_answered_in_arrival_order(tmp_path: Path) -> None:
    """Triton holds each answer of such a model until those before it are sent, whatever the
    frontend; unary calls had completed as their instances finished (['1', '2', '3', '4', '0', '5']
    with one instance five times slower). Here call 1 runs on the slow instance while 2-5 run on
    the fast one after call 0 (runs of 1 s and 3 s): none of them may be answered before call 1.
    Whichever instance each call takes (on a loaded machine call 0 may end before call 1 arrives),
    a later call's run ends before an earlier one's, so the answers' order shows the hold."""
    (tmp_path / "repo" / "ordered" / "1").mkdir(parents=True)
    (tmp_path / "repo" / "ordered" / "config.pbtxt").write_text(ORDERED_SLOW_SECOND)
    server = ServerProcess("--model-repository", str(tmp_path / "repo"))
    with server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        answered_at: dict[str, float] = {}
        calls = []
        for i in range(6):
            request = pb.ModelInferRequest(model_name="ordered", id=str(i))
            request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 4])
            request.raw_input_contents.append(np.full((1, 4), i, np.float32).tobytes())
            call = stub.ModelInfer.future(request, timeout=60)
            call.add_done_callback(lambda done: answered_at.setdefault(done.result().id, time.monotonic()))
            calls.append(call)
            if i < 2:  # 0 and 1 arrive first, one after the other, and each takes an instance
                # A count, not the in-flight gauge: a scrape under load could miss call 1's overlap
                # with call 0's 1 s run, and the gauge never read 2 again (60 s, then a failure).
                wait_until(lambda n=i + 1: batches_dispatched(server, "ordered") >= n, "the call to run")
            else:  # the server's order is its calls' arrival: concurrent calls may arrive swapped
                # (under a full parallel test run, 4 before 3: 4 was rightly answered first).
                wait_until(lambda n=i + 1: admitted(server, "ordered") >= n, "the call to be queued")
        for call in calls:
            call.result(timeout=60)
    # Answers released together may overtake one another by a hair on the way to this client (the
    # callbacks run on grpc's threads); an answer not held would be early by a whole run (1 s).
    order = [str(i) for i in range(6)]
    early = {
        (first, then): answered_at[then] - answered_at[first]
        for n, first in enumerate(order)
        for then in order[n + 1 :]
        if answered_at[then] - answered_at[first] < -HALF_A_RUN_S
    }
    assert early == {}, answered_at


def admitted(server: ServerProcess, model: str) -> float:
    """Requests of `model` taken into its queue so far, from one page, at max_batch_size 1: its
    batches dispatched plus its requests queued. The page reads the dispatch counter before the
    queue gauge, so a dispatch between the two reads counts one short, never one over."""
    lines = metrics_lines(server)
    prefixes = (
        f'sluiceway_batch_dispatch_total{{model="{model}",',
        f'sluiceway_queue_requests{{model="{model}",',
    )
    where = [next(n for n, line in enumerate(lines) if line.startswith(p)) for p in prefixes]
    assert where[0] < where[1], "the dispatch counter is no longer read before the queue gauge"
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(prefixes))


def batches_dispatched(server: ServerProcess, model: str) -> float:
    """Batches of `model` dispatched so far, whatever the reason (a count: no scrape misses one)."""
    return summed(server, f'sluiceway_batch_dispatch_total{{model="{model}",')
