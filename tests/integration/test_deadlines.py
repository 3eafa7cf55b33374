"""Deadlines over a real server: the earliest of a request's gRPC deadline, its `timeout` parameter
and its model's `default_timeout_microseconds` ends it, and the server tells a deadline apart from
a client's cancellation.

How a request is kept waiting without timing it: every model here holds a lone 1-row request in its
queue by the batching rules (it waits for a preferred batch of 4, or for a 60 s delay, with idle
dispatch off), so only a deadline, or its client cancelling, ends it before then. The batcher would
run such a request just before its deadline when its estimator predicts that a batch takes time to
run (the slack rule, README "Batching and deadlines"); a model that has never run predicts nothing,
so its request stays queued until its deadline passes. So each test has models of its own, which
nothing computes before the request under test is answered (each test checks that first).

The deadlines that must not end a request are 40 s or more away and the bound on every answer is
20 s, so a request ended by the wrong deadline fails the bound; no test sleeps.
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
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess, wait_until

BOUND_S = 20.0  # generous upper bound for an answer that a short deadline must bring
FAR_S = 120.0  # a gRPC deadline that must not be what ends a request
FAR_TIMEOUT_US = 40_000_000  # a `timeout` parameter (40 s) that must not be what ends a request
IN_QUEUE = "deadline exceeded while waiting in the queue"  # the server's words; gRPC's own differ

# A 1-row request waits for 3 more rows or 60 s; the queue has room for one request.
HELD = """
max_batch_size: 4
dynamic_batching {{
  preferred_batch_size: [ 4 ]
  max_queue_delay_microseconds: 60000000
  default_queue_policy {{ max_queue_size: 1 {queue_policy} }}
}}
parameters {{ key: "idle_dispatch" value: {{ string_value: "false" }} }}
"""
MODELS = {
    "timeout_wins": "",
    "grpc_wins": "",
    "default_wins": "default_timeout_microseconds: 1000000 allow_timeout_override: true",
    "no_override": "default_timeout_microseconds: 2000000",  # allow_timeout_override: false (Triton's)
    "cancelled": "",
    "expired": "",
}


@pytest.fixture(scope="module")
def deadline_server(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("deadlines")
    mlp = demo_repo / "mlp" / "1" / "model.onnx"
    for name, queue_policy in MODELS.items():
        write_model(repo, name, mlp, HELD.format(queue_policy=queue_policy))
    with ServerProcess("--model-repository", str(repo)) as server:
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
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    never_ran(stub, "timeout_wins")
    err, elapsed = failure_of(stub, request("timeout_wins", timeout_us=500_000), FAR_S)
    # The server's answer (its words), not the client's: the gRPC deadline is 120 s away.
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (err.code(), err.details())
    assert err.details() == IN_QUEUE
    assert elapsed >= 0.5


def test_a_short_grpc_deadline_ends_a_request_whose_timeout_is_long(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    never_ran(stub, "grpc_wins")
    err, elapsed = failure_of(stub, request("grpc_wins", timeout_us=FAR_TIMEOUT_US), 2.0)
    # The server expires it in its queue at the gRPC deadline, when the client gives up too: either
    # may answer first. Not before the deadline, and not at the 40 s `timeout`.
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (err.code(), err.details())
    assert elapsed >= 2.0 * 0.9


def test_a_model_default_timeout_shorter_than_both_ends_the_request(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    # default_timeout_microseconds 1 s (REJECT), a 40 s `timeout` and a 120 s gRPC deadline.
    never_ran(stub, "default_wins")
    err, elapsed = failure_of(stub, request("default_wins", timeout_us=FAR_TIMEOUT_US), FAR_S)
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (err.code(), err.details())
    assert err.details() == IN_QUEUE
    assert elapsed >= 1.0 * 0.9


def test_without_allow_timeout_override_a_requests_timeout_is_ignored(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    # default_timeout_microseconds 2 s, allow_timeout_override unset (false, as in Triton): the
    # request's 100 ms `timeout` does not count, so the model's 2 s default ends it, in the queue.
    never_ran(stub, "no_override")
    err, elapsed = failure_of(stub, request("no_override", timeout_us=100_000), FAR_S)
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (err.code(), err.details())
    assert err.details() == IN_QUEUE
    assert elapsed >= 2.0 * 0.9, f"ended after {elapsed:.3f} s: the request's own timeout counted"


def test_a_cancelled_request_and_an_expired_one_are_told_apart_and_neither_is_computed(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    def queue_is_full(model: str) -> bool:
        # A probe with a 1 us timeout: refused "queue is full" while a request is queued; else it
        # ends by its own deadline (at once, or within a microsecond of being queued).
        try:
            stub.ModelInfer(request(model, timeout_us=1), timeout=30)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                assert "queue is full" in (err.details() or ""), err.details()
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

    # Expired in the queue: the server answers it, and says where it was.
    expired_before = never_ran(stub, "expired")
    err, _ = failure_of(stub, request("expired", timeout_us=300_000), FAR_S)
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (err.code(), err.details())
    assert "queue" in (err.details() or ""), err.details()
    after_expiry = stats(stub, "expired")

    for before, after in ((cancelled_before, after_cancel), (expired_before, after_expiry)):
        assert after.execution_count == before.execution_count  # never computed
        assert after.inference_count == before.inference_count
        assert after.inference_stats.success.count == before.inference_stats.success.count
    # The server answered the expired request (a failure); the cancelled one it never answered.
    assert after_expiry.inference_stats.fail.count == expired_before.inference_stats.fail.count + 1

    # Each model now runs a full batch at once, alone: neither request is still waiting to join one.
    for model in ("cancelled", "expired"):
        before = stats(stub, model)
        assert list(stub.ModelInfer(request(model, rows=4), timeout=30).outputs[0].shape) == [4, 2]
        after = stats(stub, model)
        assert after.inference_count - before.inference_count == 4
        assert after.execution_count - before.execution_count == 1
