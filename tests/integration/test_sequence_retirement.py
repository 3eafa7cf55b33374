"""A sequence's requests queued when its model version is retired (an unload, a reload that
replaced the version): they were accepted, so the retired version runs them within
shutdown_grace_s, as it drains its queue; what the grace leaves is UNAVAILABLE saying the version
went while the request waited, with ErrorInfo SEQUENCE_RETIRED (not to be sent again as is). All of
them had been refused INVALID_ARGUMENT "must specify the START flag ... it is not live" the moment
the version was retired (6 of 8 requests of a stream; 3 of 5 unary calls in flight). A
continuation sent after the retirement keeps Triton's INVALID_ARGUMENT (README "Stateful
sequences", Release; batcher/sequence.py close and drain, server/models/retirement.py)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from clients.errors import from_rpc_error
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.integration.test_sequences import outputs, request
from tests.support import sequence_models as sm
from tests.support.metrics_page import summed
from tests.support.repositories import newer, write_model
from tests.support.server_process import ServerProcess, wait_until

MODEL = "acc_slow"
HANG_S = 0.3  # each run: the requests behind one wait for their turn meanwhile
SLOW = sm.accumulator_config() + "".join(
    f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n'
    for k, v in (("fault_hang_every", "1"), ("fault_hang_s", str(HANG_S)))
)
WENT = "ended while this request waited for its turn: the model version serving it was unloaded or replaced"
ONES = np.ones((1, 4), np.float32)


def start_server(repo: Path, *extra: str) -> ServerProcess:
    write_model(repo, MODEL, sm.accumulator_model(repo.parent / "acc.onnx"), SLOW)
    args = ("--model-repository", str(repo), "--model-control-mode", "explicit", "--load-model", MODEL)
    return ServerProcess(*args, "--allow-fault-injection", *extra)


@pytest.fixture(scope="module")
def graced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The default shutdown_grace_s (5 s): room for every queued request."""
    with start_server(tmp_path_factory.mktemp("graced") / "repo") as server:
        yield server


@pytest.fixture(scope="module")
def graceless(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """shutdown_grace_s 0: a retired version runs nothing more."""
    with start_server(tmp_path_factory.mktemp("graceless") / "repo", "--shutdown-grace-s", "0") as server:
        yield server


def connect(server: ServerProcess) -> pb_grpc.GRPCInferenceServiceStub:
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.address))
    stub.RepositoryModelLoad(
        pb.RepositoryModelLoadRequest(model_name=MODEL), timeout=60
    )  # an earlier test's unload
    return stub


def waiting(server: ServerProcess) -> float:
    """Requests of the model queued or waiting for their sequence's turn."""
    return summed(server, f'nv_inference_pending_request_count{{model="{MODEL}",')


def unload(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=MODEL), timeout=60)


def reload(stub: pb_grpc.GRPCInferenceServiceStub, server_repo: Path) -> None:
    newer(server_repo / MODEL / "1" / "model.onnx")  # the version is replaced, not kept
    stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=MODEL), timeout=60)


def repo_of(server: ServerProcess) -> Path:
    return Path(server.args[server.args.index("--model-repository") + 1])


def stream_then_retire(
    server: ServerProcess, sid: int, n: int, retire: str
) -> list[pb.ModelStreamInferResponse]:
    """`n` requests of sequence `sid` (the first its start) down one stream; once the start is
    answered and the others are queued, the model is unloaded or reloaded; every answer, in order."""
    stub = connect(server)
    frames: queue.Queue[pb.ModelInferRequest | None] = queue.Queue()
    answers = stub.ModelStreamInfer(iter(frames.get, None), timeout=60)
    for i in range(n):
        frames.put(request(MODEL, sid, ONES, start=i == 0, rid=f"{sid}-{i}"))
    got = [next(answers)]
    wait_until(lambda: waiting(server) >= n - 3, "the stream's requests queued for their turn")
    unload(stub) if retire == "unload" else reload(stub, repo_of(server))
    got += [next(answers) for _ in range(n - 1)]
    frames.put(None)
    assert [a.infer_response.id for a in got] == [f"{sid}-{i}" for i in range(n)]
    return got


def unary_then_unload(server: ServerProcess, sid: int, n: int) -> list[object]:
    """Sequence `sid` started, then `n` continuations sent at once, each its own call; once they
    are queued, the model is unloaded; each call's output, or its error."""
    stub = connect(server)
    assert outputs(stub.ModelInfer(request(MODEL, sid, ONES, start=True)))["out"][0, 0] == 1
    results: list[object] = []

    def call() -> None:
        try:
            results.append(outputs(stub.ModelInfer(request(MODEL, sid, ONES), timeout=60))["out"][0, 0])
        except grpc.RpcError as exc:
            results.append(exc)

    threads = [threading.Thread(target=call) for _ in range(n)]
    for thread in threads:
        thread.start()
    # Every call in: those waiting or queued, and those answered, are all but the one running.
    wait_until(lambda: waiting(server) + len(results) >= n - 1, "the calls queued for their turn")
    unload(stub)
    for thread in threads:
        thread.join(60)
    assert len(results) == n
    return results


@pytest.mark.parametrize("retire", ["unload", "reload"])
def test_a_streams_queued_requests_run_before_their_version_goes(graced: ServerProcess, retire: str) -> None:
    sid = 31 if retire == "unload" else 30
    got = stream_then_retire(graced, sid, 6, retire)
    assert [a.error_message for a in got] == [""] * 6  # 2 answered, 4 "must specify the START flag"
    assert [outputs(a.infer_response)["out"][0, 0] for a in got] == [1, 2, 3, 4, 5, 6]
    if retire == "reload":  # sent after the retirement: Triton's words, and why
        stub = connect(graced)
        with pytest.raises(grpc.RpcError) as late:
            stub.ModelInfer(request(MODEL, sid, ONES))
        assert late.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "must specify the START flag" in (late.value.details() or "")
        assert "unloaded or replaced" in (late.value.details() or "")


def test_unary_continuations_in_flight_run_before_an_unload_ends_their_sequence(
    graced: ServerProcess,
) -> None:
    results = unary_then_unload(graced, 20, 4)
    assert all(not isinstance(r, grpc.RpcError) for r in results), results  # 2 of 4 had been refused
    assert sorted(results) == [2, 3, 4, 5]  # type: ignore[type-var]


def test_a_streams_requests_the_grace_left_are_unavailable_saying_why(graceless: ServerProcess) -> None:
    got = stream_then_retire(graceless, 41, 6, "unload")
    errors = [a.error_message for a in got[1:]]
    assert not any(e.startswith("INVALID_ARGUMENT") for e in errors), errors
    # The one in its run when the version went may be answered (or cut); those behind it were not run.
    assert all(e.startswith("UNAVAILABLE: sequence 41 of model 'acc_slow' " + WENT) for e in errors[-3:]), (
        errors
    )
    assert "shutdown_grace_s" in errors[-1] and "start the sequence again" in errors[-1]


def test_unary_calls_the_grace_left_are_unavailable_and_not_to_be_sent_again(
    graceless: ServerProcess,
) -> None:
    results = unary_then_unload(graceless, 42, 4)
    errors = [r for r in results if isinstance(r, grpc.RpcError)]
    assert all(e.code() != grpc.StatusCode.INVALID_ARGUMENT for e in errors), [e.details() for e in errors]
    retired = [from_rpc_error(e) for e in errors if WENT in (e.details() or "")]
    assert len(retired) >= 2, [e.details() for e in errors]
    assert all(e.code == grpc.StatusCode.UNAVAILABLE and e.reason == "SEQUENCE_RETIRED" for e in retired)
