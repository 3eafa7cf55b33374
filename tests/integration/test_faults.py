"""Faults over a real server: a batch that raises, a run that hangs past the watchdog, models that
fail to load, and clients that cancel or go away mid-flight, while the other models serve.

The server runs with --allow-fault-injection on a repository with fault-injected copies of the
demo mlp beside a normal one (server/backends/fault_backend.py). Faults are due by run number per
instance, so each test has models of its own that nothing else runs (checked: never run before)
whatever order the tests run in. A request is known to be running when /metrics counts it out of
the queue (tests/support/dispatched.py; a hung run goes on until the watchdog's limit), and
known to be queued when a probe finds the queue of one full. No test sleeps.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from server.errors import INTERNAL_MESSAGE
from tests.support.dispatched import dispatched
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess, wait_until

HANG_LIMIT_S = 3.0  # run_timeout_s of the hanging models: a run that hangs fails after this
BOUND_S = 60.0  # an upper bound on any answer here

MLP = """
max_batch_size: 8
dynamic_batching {{ {queue} }}
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
{parameters}
"""


def parameters(**values: str) -> str:
    return "\n".join(
        f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in values.items()
    )


HANGS = parameters(fault_hang_every="2", run_timeout_s=f"{HANG_LIMIT_S:g}")  # run 2 of an instance hangs
MODELS = {
    "mlp": MLP.format(queue="", parameters=""),
    "raises": MLP.format(queue="", parameters=parameters(fault_raise_every="2")),
    "hangs": MLP.format(queue="", parameters=HANGS),
    "cancels": MLP.format(queue="default_queue_policy { max_queue_size: 1 }", parameters=HANGS),
    "streamed": MLP.format(queue="default_queue_policy { max_queue_size: 1 }", parameters=HANGS),
    "noload": MLP.format(queue="", parameters=parameters(fault_load_error="true")),
}


@pytest.fixture(scope="module")
def fault_server(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("faults")
    mlp = demo_repo / "mlp" / "1" / "model.onnx"
    for name, config in MODELS.items():
        write_model(repo, name, mlp, config)
    corrupt = tmp_path_factory.mktemp("corrupt") / "model.onnx"
    corrupt.write_bytes(b"this is not an onnx model")
    write_model(repo, "corrupt", corrupt, None)
    with ServerProcess("--model-repository", str(repo), "--allow-fault-injection") as server:
        yield server


@pytest.fixture()
def stub(fault_server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(fault_server.address) as channel:
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
    before = stats(stub, model)
    assert before.execution_count == 0 and before.inference_stats.queue.count == 0, f"'{model}' has run"
    return before


def left_queue(server: ServerProcess, model: str, count: int) -> None:
    """Until `count` requests of `model` have left its queue for a batch."""
    wait_until(lambda: dispatched(server.metrics_port, model) >= count, f"{count} requests of {model} to run")


def error_of(future: grpc.Future) -> grpc.RpcError:
    try:
        answer = future.result(timeout=BOUND_S)
    except grpc.RpcError as err:
        return err
    raise AssertionError(f"answered OK, should have failed: {answer}")


class Probe:
    """Whether a model's queue of one is full, asked with requests that never enter it (their
    1 us timeout has passed by then): refused at max_queue_size while a request is queued, else for
    their deadline. Each probe is one failure in the model's statistics: `sent` counts them."""

    def __init__(self, stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> None:
        self.stub = stub
        self.model = model
        self.sent = 0

    def queue_is_full(self) -> bool:
        self.sent += 1
        try:
            self.stub.ModelInfer(request(self.model, timeout_us=1), timeout=30)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.UNAVAILABLE:
                assert "Exceeds maximum queue size" in (err.details() or ""), err.details()
                return True
            assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (err.code(), err.details())
            return False
        raise AssertionError("a probe with a 1 us timeout was answered OK")


def counts(s: pb.ModelStatistics) -> tuple[int, int, int, int]:
    """(success, fail, execution_count, inference_count)"""
    return s.inference_stats.success.count, s.inference_stats.fail.count, s.execution_count, s.inference_count


def delta(after: pb.ModelStatistics, before: pb.ModelStatistics) -> tuple[int, int, int, int]:
    return tuple(a - b for a, b in zip(counts(after), counts(before), strict=True))  # type: ignore[return-value]


def test_a_batch_that_raises_fails_with_internal_and_the_next_batches_run(
    stub: pb_grpc.GRPCInferenceServiceStub, fault_server: ServerProcess
) -> None:
    before = never_ran(stub, "raises")
    outcomes = []
    for _ in range(4):  # one after the other: each request is a batch of its own
        try:
            answer = stub.ModelInfer(request("raises"), timeout=30)
            assert list(answer.outputs[0].shape) == [1, 2]
            outcomes.append("ok")
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.INTERNAL, (err.code(), err.details())
            assert err.details() == INTERNAL_MESSAGE  # no internals: the details are in the log
            outcomes.append("internal")
    assert outcomes == ["ok", "internal", "ok", "internal"]
    after = stats(stub, "raises")
    assert delta(after, before) == (2, 2, 2, 2)  # failed runs computed nothing
    # As Triton: queue and compute count the successful requests only (queue had counted all 4).
    assert after.inference_stats.queue.count - before.inference_stats.queue.count == 2
    assert after.inference_stats.compute_infer.count - before.inference_stats.compute_infer.count == 2
    assert list(stub.ModelInfer(request("mlp"), timeout=30).outputs[0].shape) == [1, 2]
    fault_server.wait_for_output("run 4 raised on purpose (fault_raise_every=2)")


def test_a_hung_run_fails_at_the_limit_and_a_fresh_instance_serves_the_queue(
    stub: pb_grpc.GRPCInferenceServiceStub, fault_server: ServerProcess
) -> None:
    before = never_ran(stub, "hangs")
    assert list(stub.ModelInfer(request("hangs"), timeout=30).outputs[0].shape) == [1, 2]  # run 1
    finished: dict[str, float] = {}
    sent = time.monotonic()
    hung = stub.ModelInfer.future(request("hangs"), timeout=BOUND_S)  # run 2: hangs
    hung.add_done_callback(lambda _: finished.setdefault("hung", time.monotonic()))
    left_queue(fault_server, "hangs", 2)
    queued = stub.ModelInfer.future(request("hangs", rows=3), timeout=BOUND_S)  # behind the hung run
    assert list(stub.ModelInfer(request("mlp"), timeout=30).outputs[0].shape) == [1, 2]  # others serve
    finished["mlp"] = time.monotonic()
    err = error_of(hung)
    assert err.code() == grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())
    assert f"within run_timeout_s ({HANG_LIMIT_S:g} s)" in (err.details() or ""), err.details()
    assert finished["mlp"] < finished["hung"]  # the other model answered while this one hung
    assert finished["hung"] - sent >= HANG_LIMIT_S  # failed by the watchdog, not sooner
    assert list(queued.result(timeout=BOUND_S).outputs[0].shape) == [3, 2]  # run 1 of the fresh instance
    # The hung run computed nothing; its request is one failure, the others successes.
    assert delta(stats(stub, "hangs"), before) == (2, 1, 2, 4)
    fault_server.wait_for_output(
        "model hangs version 1: instance 0 ran a batch of 1 rows (1 requests) past run_timeout_s"
    )
    fault_server.wait_for_output("model hangs: instance 0 replaced (new session and executor)")


def test_calls_cancelled_while_queued_or_running_are_never_answered_or_counted(
    stub: pb_grpc.GRPCInferenceServiceStub, fault_server: ServerProcess
) -> None:
    probe = Probe(stub, "cancels")
    before = never_ran(stub, "cancels")
    assert list(stub.ModelInfer(request("cancels"), timeout=30).outputs[0].shape) == [1, 2]  # run 1
    running = stub.ModelInfer.future(request("cancels"), timeout=BOUND_S)  # run 2: hangs
    left_queue(fault_server, "cancels", 2)
    waiting = stub.ModelInfer.future(request("cancels", rows=2), timeout=BOUND_S)
    wait_until(lambda: waiting.done() or probe.queue_is_full(), "the request to be queued")
    assert waiting.cancel(), f"answered before it was cancelled: {waiting.exception()!r}"
    wait_until(lambda: not probe.queue_is_full(), "the cancelled request to leave the queue")
    assert running.cancel(), f"answered before it was cancelled: {running.exception()!r}"
    # Served once the watchdog has replaced the instance: the cancelled requests are in no batch.
    assert list(stub.ModelInfer(request("cancels", rows=4), timeout=BOUND_S).outputs[0].shape) == [4, 2]
    success, fail, executions, rows = delta(stats(stub, "cancels"), before)
    assert (success, executions, rows) == (2, 2, 1 + 4)  # the 2 queued rows were never computed
    assert fail == probe.sent  # the cancelled calls count neither as a success nor as a failure


def test_a_stream_closed_mid_flight_leaves_the_server_serving(
    stub: pb_grpc.GRPCInferenceServiceStub, fault_server: ServerProcess
) -> None:
    before = never_ran(stub, "streamed")
    probe = Probe(stub, "streamed")
    sending: queue.Queue[pb.ModelInferRequest | None] = queue.Queue()

    def requests() -> Iterator[pb.ModelInferRequest]:
        while (item := sending.get()) is not None:
            yield item

    with grpc.insecure_channel(fault_server.address) as channel:
        call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(requests(), timeout=BOUND_S)
        sending.put(request("streamed"))  # run 1
        first = next(call)
        assert not first.error_message and list(first.infer_response.outputs[0].shape) == [1, 2]
        sending.put(request("streamed"))  # run 2: hangs
        left_queue(fault_server, "streamed", 2)
        sending.put(request("streamed", rows=2))  # queued behind it
        wait_until(probe.queue_is_full, "the stream's second request to be queued")
        sending.put(request("mlp", rows=3))  # another model, on the same stream
        answer = next(call)
        assert list(answer.infer_response.outputs[0].shape) == [3, 2], answer.error_message
        assert call.cancel()  # the client goes away with a request running and one queued
        sending.put(None)
    # The server sees the cancel on its own time: a CI run's next call found the queue still full.
    wait_until(lambda: not probe.queue_is_full(), "the cancelled stream's queued request to go")
    assert list(stub.ModelInfer(request("streamed", rows=4), timeout=BOUND_S).outputs[0].shape) == [4, 2]
    # Answered: run 1 and the 4 rows after the watchdog; the 2 queued rows were never computed.
    assert delta(stats(stub, "streamed"), before) == (2, probe.sent, 2, 1 + 4)


def test_a_client_that_disconnects_with_calls_in_flight_does_not_stop_the_server(
    stub: pb_grpc.GRPCInferenceServiceStub, fault_server: ServerProcess
) -> None:
    before = stats(stub, "mlp")
    channel = grpc.insecure_channel(fault_server.address)
    gone = pb_grpc.GRPCInferenceServiceStub(channel)
    calls = [gone.ModelInfer.future(request("mlp", rows=1 + i % 8), timeout=BOUND_S) for i in range(64)]
    channel.close()  # every call on it is cancelled, wherever it was on the server
    assert list(stub.ModelInfer(request("mlp", rows=2), timeout=30).outputs[0].shape) == [2, 2]
    success, fail, _, rows = delta(stats(stub, "mlp"), before)
    assert success >= 1 and success + fail <= len(calls) + 1  # never a request counted twice
    assert rows >= success + 1  # every success was computed (the last one had 2 rows)


def test_models_that_fail_to_load_are_reported_and_the_others_serve(
    stub: pb_grpc.GRPCInferenceServiceStub, fault_server: ServerProcess
) -> None:
    index = {m.name: m for m in stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=30).models}
    assert index["noload"].state == "UNAVAILABLE"
    assert (
        index["noload"].reason == "model 'noload': failed to load on purpose (parameters 'fault_load_error')"
    )
    assert index["corrupt"].state == "UNAVAILABLE" and "not a readable ONNX model" in index["corrupt"].reason
    assert {name for name, m in index.items() if m.state == "READY"} == set(MODELS) - {"noload"}
    for model in ("noload", "corrupt"):
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(request(model), timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE and "not ready" in (
            refused.value.details() or ""
        )
    with grpc.insecure_channel(fault_server.address) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        status = {
            m: check(health_pb2.HealthCheckRequest(service=m), timeout=10).status
            for m in ("mlp", "noload", "corrupt")
        }
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    assert status == {"mlp": serving, "noload": not_serving, "corrupt": not_serving}
    assert not stub.ServerReady(pb.ServerReadyRequest(), timeout=30).ready  # strict readiness
    assert list(stub.ModelInfer(request("mlp"), timeout=30).outputs[0].shape) == [1, 2]
