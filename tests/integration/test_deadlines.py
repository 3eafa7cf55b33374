"""Deadlines over a real server: the earlier of a request's gRPC deadline and its `timeout` parameter
ends it, its model's `default_timeout_microseconds` bounds only its wait in the queue (Triton's
REJECT), and the server tells a deadline apart from a client's cancellation.

How a request is kept waiting without timing it: every model here holds a lone 1-row request in its
queue by the batching rules (it waits for a preferred batch of 4, or for a 60 s delay, with idle
dispatch off), so only a queue-policy timeout, or its client cancelling, ends it before then. A
deadline of its own is different: the batcher runs the request in time for it (the slack rule,
README "Batching and deadlines"). So a request that must wait out its deadline waits behind a
4-row request (a preferred batch: it runs at once) on the model's one instance, whose runs take
1.5 s (fault injection). Each test has models of its own that have not run yet (each test checks
that first): a model that has run would predict its 1.5 s runs and refuse the request at once.

The deadlines that must not end a request are 40 s or more away and the bound on every answer is
20 s, so a request ended by the wrong deadline fails the bound; no test sleeps.
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess, wait_until

BOUND_S = 20.0  # generous upper bound for an answer that a short deadline must bring
FAR_S = 120.0  # a gRPC deadline that must not be what ends a request
FAR_TIMEOUT_US = 40_000_000  # a `timeout` parameter (40 s) that must not be what ends a request
IN_QUEUE = "deadline exceeded while waiting in the queue"  # the server's words; gRPC's own differ
QUEUE_TIMEOUT = "request timeout expired: queued "  # a queue-policy timeout (REJECT) passed

# A 1-row request waits for 3 more rows or 60 s; the queue has room for one request.
HELD = """
max_batch_size: 4
dynamic_batching {{
  preferred_batch_size: [ 4 ]
  max_queue_delay_microseconds: 60000000
  default_queue_policy {{ max_queue_size: 1 {queue_policy} }}
}}
parameters {{ key: "idle_dispatch" value: {{ string_value: "false" }} }}
{faults}
"""
SLOW = """
instance_group [ { count: 1 kind: KIND_CPU } ]
parameters { key: "fault_hang_every" value: { string_value: "1" } }
parameters { key: "fault_hang_s" value: { string_value: "1.5" } }
"""
MODELS = {
    "timeout_wins": ("", SLOW),
    "grpc_wins": ("", SLOW),
    "default_wins": ("default_timeout_microseconds: 1000000 allow_timeout_override: true", ""),
    "no_override": ("default_timeout_microseconds: 2000000", ""),  # allow_timeout_override: false (Triton's)
    "cancelled": ("", ""),
    "expired": ("", SLOW),
}


@pytest.fixture(scope="module")
def deadline_server(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("deadlines")
    mlp = demo_repo / "mlp" / "1" / "model.onnx"
    for name, (queue_policy, faults) in MODELS.items():
        write_model(repo, name, mlp, HELD.format(queue_policy=queue_policy, faults=faults))
    with ServerProcess("--model-repository", str(repo), "--allow-fault-injection") as server:
        yield server


@pytest.fixture()
def stub(deadline_server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(deadline_server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def request(model: str, rows: int = 1, timeout_us: int = 0) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(
        model_name=model,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[rows, 64])],
        raw_input_contents=[np.full((rows, 64), 0.5, np.float32).tobytes()],
    )
    if timeout_us:
        req.parameters["timeout"].int64_param = timeout_us
    return req


def stats(stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> pb.ModelStatistics:
    answer: pb.ModelStatisticsResponse = stub.ModelStatistics(
        pb.ModelStatisticsRequest(name=model), timeout=30
    )
    return answer.model_stats[0]


def never_ran(stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> pb.ModelStatistics:
    """The model's statistics, checked to show no run yet (see the module docstring)."""
    before = stats(stub, model)
    assert before.execution_count == 0, f"'{model}' has run already: it would not hold a request"
    return before


def occupied(stub: pb_grpc.GRPCInferenceServiceStub, server: ServerProcess, model: str) -> grpc.Future:
    """A 4-row request, running on `model`'s one instance for 1.5 s (longer than any deadline waited
    out behind it): what is sent next waits in the queue."""
    call = stub.ModelInfer.future(request(model, rows=4), timeout=BOUND_S)
    wait_until(lambda: call.done() or in_flight(server, model) >= 1, f"a run of '{model}' to start")
    assert not call.done(), f"the run of '{model}' ended at once: {call.exception()!r}"
    return call


def failure_of(
    stub: pb_grpc.GRPCInferenceServiceStub, req: pb.ModelInferRequest, grpc_timeout_s: float
) -> tuple[grpc.RpcError, float]:
    """The error that ends `req` and the seconds it took; fails the test if it is answered OK or
    not at all within BOUND_S."""
    start = time.monotonic()
    call = stub.ModelInfer.future(req, timeout=grpc_timeout_s)
    try:
        answer = call.result(timeout=BOUND_S)
    except grpc.FutureTimeoutError:
        call.cancel()
        raise AssertionError(f"no answer within {BOUND_S:g} s: a later deadline than the earliest") from None
    except grpc.RpcError as err:
        return err, time.monotonic() - start
    raise AssertionError(f"answered OK, should have failed: {answer}")


def test_a_short_timeout_ends_a_request_long_before_its_grpc_deadline(
    stub: pb_grpc.GRPCInferenceServiceStub, deadline_server: ServerProcess
) -> None:
    never_ran(stub, "timeout_wins")
    running = occupied(stub, deadline_server, "timeout_wins")
    err, elapsed = failure_of(stub, request("timeout_wins", timeout_us=500_000), FAR_S)
    running.result(timeout=BOUND_S)
    # The server's answer (its words), not the client's: the gRPC deadline is 120 s away.
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (err.code(), err.details())
    assert err.details() == IN_QUEUE
    assert elapsed >= 0.5


def test_a_short_grpc_deadline_ends_a_request_whose_timeout_is_long(
    stub: pb_grpc.GRPCInferenceServiceStub, deadline_server: ServerProcess
) -> None:
    never_ran(stub, "grpc_wins")
    running = occupied(stub, deadline_server, "grpc_wins")
    err, elapsed = failure_of(stub, request("grpc_wins", timeout_us=FAR_TIMEOUT_US), 1.0)
    running.result(timeout=BOUND_S)
    # The server expires it in its queue at the gRPC deadline, when the client gives up too: either
    # may answer first. Not before the deadline, and not at the 40 s `timeout`.
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (err.code(), err.details())
    assert elapsed >= 1.0 * 0.9


def test_a_model_default_timeout_shorter_than_both_ends_the_request(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    # default_timeout_microseconds 1 s (REJECT), a 40 s `timeout` and a 120 s gRPC deadline.
    never_ran(stub, "default_wins")
    err, elapsed = failure_of(stub, request("default_wins", timeout_us=FAR_TIMEOUT_US), FAR_S)
    assert err.code() == grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())  # Triton's code
    assert (err.details() or "").startswith(QUEUE_TIMEOUT), err.details()
    assert elapsed >= 1.0 * 0.9


def test_without_allow_timeout_override_a_requests_timeout_is_ignored(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    # default_timeout_microseconds 2 s, allow_timeout_override unset (false, as in Triton): the
    # request's 100 ms `timeout` does not count, so the model's 2 s default ends it, in the queue.
    never_ran(stub, "no_override")
    err, elapsed = failure_of(stub, request("no_override", timeout_us=100_000), FAR_S)
    assert err.code() == grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())
    assert (err.details() or "").startswith(QUEUE_TIMEOUT), err.details()
    assert elapsed >= 2.0 * 0.9, f"ended after {elapsed:.3f} s: the request's own timeout counted"


def test_a_cancelled_request_and_an_expired_one_are_told_apart_and_neither_is_computed(
    stub: pb_grpc.GRPCInferenceServiceStub, deadline_server: ServerProcess
) -> None:
    def queue_is_full(model: str) -> bool:
        # A probe with a 1 us timeout: refused at max_queue_size while a request is queued; else it
        # ends by its own deadline (at once, or within a microsecond of being queued).
        try:
            stub.ModelInfer(request(model, timeout_us=1), timeout=30)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.UNAVAILABLE:
                assert "Exceeds maximum queue size" in (err.details() or ""), err.details()
                return True
            assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (err.code(), err.details())
            return False
        raise AssertionError("a probe with a 1 us timeout was answered OK")

    # Cancelled by its client while queued (seen from the server: the queue of one is full).
    cancelled_before = never_ran(stub, "cancelled")
    cancelled = stub.ModelInfer.future(request("cancelled"), timeout=FAR_S)
    wait_until(lambda: cancelled.done() or queue_is_full("cancelled"), "the request to be queued")
    assert cancelled.cancel(), f"answered before it was cancelled: {cancelled.exception()!r}"
    wait_until(lambda: not queue_is_full("cancelled"), "the cancelled request to leave", timeout_s=BOUND_S)
    with pytest.raises(grpc.FutureCancelledError):
        cancelled.result()
    after_cancel = stats(stub, "cancelled")

    # Expired in the queue (behind a run): the server answers it, and says where it was.
    expired_before = never_ran(stub, "expired")
    running = occupied(stub, deadline_server, "expired")
    err, _ = failure_of(stub, request("expired", timeout_us=300_000), FAR_S)
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (err.code(), err.details())
    assert "queue" in (err.details() or ""), err.details()
    running.result(timeout=BOUND_S)
    after_expiry = stats(stub, "expired")

    assert after_cancel.execution_count == cancelled_before.execution_count  # never computed
    assert after_cancel.inference_count == cancelled_before.inference_count
    assert after_cancel.inference_stats.success.count == cancelled_before.inference_stats.success.count
    # Of the expired model, only the 4-row run it waited behind was computed.
    assert after_expiry.execution_count == expired_before.execution_count + 1
    assert after_expiry.inference_count == expired_before.inference_count + 4
    assert after_expiry.inference_stats.success.count == expired_before.inference_stats.success.count + 1
    # The server answered the expired request (a failure); the cancelled one it never answered.
    assert after_expiry.inference_stats.fail.count == expired_before.inference_stats.fail.count + 1

    # Each model now runs a full batch at once, alone: neither request is still waiting to join one.
    for model in ("cancelled", "expired"):
        before = stats(stub, model)
        assert list(stub.ModelInfer(request(model, rows=4), timeout=30).outputs[0].shape) == [4, 2]
        after = stats(stub, model)
        assert after.inference_count - before.inference_count == 4
        assert after.execution_count - before.execution_count == 1


# Every run takes 0.6 s, one instance, no batching delay.
SLOW_RUNS = """
max_batch_size: 4
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
dynamic_batching {{ default_queue_policy {{ {queue_policy} }} }}
parameters {{ key: "fault_hang_every" value: {{ string_value: "1" }} }}
parameters {{ key: "fault_hang_s" value: {{ string_value: "0.6" }} }}
"""


def in_flight(server: ServerProcess, model: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    prefix = f'sluiceway_batches_in_flight{{model="{model}",version="1"}} '
    return sum(float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix))


def test_a_queue_timeout_shorter_than_a_run_rejects_only_what_waits_in_the_queue(
    demo_repo: Path, tmp_path: Path
) -> None:
    """A 300 ms REJECT timeout on a model whose runs take 600 ms failed every request, even on an
    idle server (it was a deadline on queue plus compute); Triton applies it to the queue only.
    With DELAY and a shorter override it refused them all at once; DELAY never refuses."""
    mlp = demo_repo / "mlp" / "1" / "model.onnx"
    reject = "default_timeout_microseconds: 300000"  # timeout_action REJECT, Triton's default
    delay = "default_timeout_microseconds: 10000000 timeout_action: DELAY allow_timeout_override: true"
    write_model(tmp_path / "repo", "reject", mlp, SLOW_RUNS.format(queue_policy=reject))
    write_model(tmp_path / "repo", "delay", mlp, SLOW_RUNS.format(queue_policy=delay))
    args = ("--model-repository", str(tmp_path / "repo"), "--allow-fault-injection", "--no-idle-dispatch")
    with ServerProcess(*args) as server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stub.ModelInfer(request("reject"), timeout=BOUND_S)  # alone: its 600 ms run is no wait
        first = stub.ModelInfer.future(request("reject"), timeout=BOUND_S)
        wait_until(lambda: in_flight(server, "reject") >= 1, "the first request to run")
        err, _ = failure_of(stub, request("reject"), BOUND_S)  # waits behind it past 300 ms
        assert err.code() == grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())
        # Refused for its wait in the queue, once that passed 300 ms (not at once, nor counting the
        # run). How late past 300 ms is the machine's: 666 ms in a CI run at a load average of 25.
        said = re.match(re.escape(QUEUE_TIMEOUT) + r"([0-9.]+) ms", err.details() or "")
        assert said is not None and float(said.group(1)) >= 300.0, err.details()
        first.result(timeout=BOUND_S)  # computed for 600 ms and answered
        # A 50 ms override of a DELAY timeout demotes; the requests all run.
        calls = [
            stub.ModelInfer.future(request("delay", timeout_us=50_000), timeout=BOUND_S) for _ in range(3)
        ]
        for call in calls:
            call.result(timeout=BOUND_S)
        assert stats(stub, "reject").inference_stats.success.count == 2
        assert stats(stub, "delay").inference_stats.success.count == 3


def test_a_grpc_deadline_that_passes_during_the_run_counts_as_a_failure_not_a_cancel(
    demo_repo: Path, tmp_path: Path
) -> None:
    """gRPC cuts the handler at the call's deadline; the server counted that as a caller who went
    away (CANCELED, no failure) and its span said CANCELLED, while the caller got DEADLINE_EXCEEDED."""
    mlp = demo_repo / "mlp" / "1" / "model.onnx"
    write_model(tmp_path / "repo", "slow", mlp, SLOW_RUNS.format(queue_policy=""))
    args = ("--model-repository", str(tmp_path / "repo"), "--allow-fault-injection")
    with ServerProcess(*args) as server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request("slow"), timeout=0.2)  # the run takes 0.6 s
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_until(lambda: stats(stub, "slow").inference_stats.fail.count == 1, "the miss to be counted")
        with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=30) as page:
            text = page.read().decode()
    assert 'nv_inference_request_failure{model="slow",reason="REJECTED",version="1"} 1.0' in text, text
