"""A sequence request whose answer cannot be written (its output's shared-memory object was
truncated) leaves the sequence's state as it was, whether the object was truncated before it was
sent (refused at admission, not run) or while it waited for its batch (run, its answer failed, its
state not kept); a start refused for max_sequences is told to its continuation as a start that did
not run; a string sequence id is quoted in the messages."""

from __future__ import annotations

import os
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import grpc
import numpy as np
import pytest

from clients import tensors
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support import sequence_models as sm
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess, wait_until
from tests.support.shm_stub import unregistering_stub

SHM = Path("/dev/shm")
OUT_BYTES = 16  # out: f32[1, 4]
# Batches of two rows, formed only when full (or after 60 s): a request held in the queue for certain.
HELD = """
max_batch_size: 2
sequence_batching {
  max_sequence_idle_microseconds: 60000000
  oldest { max_queue_delay_microseconds: 60000000 preferred_batch_size: [ 2 ] }
  state [ { input_name: "acc" output_name: "acc_out" data_type: TYPE_FP32 dims: [ 4 ]
            initial_state { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true name: "zeros" } } ]
}
parameters { key: "idle_dispatch" value: { string_value: "false" } }
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("repo")
    onnx_file = sm.accumulator_model(tmp_path_factory.mktemp("files") / "acc.onnx")
    write_model(repo, "acc", onnx_file, sm.accumulator_config())
    write_model(repo, "acc_limit", onnx_file, sm.accumulator_config())
    write_model(repo, "acc_held", onnx_file, HELD)
    flags = ["--allow-client-shm", "--max-sequences", "2"]
    with ServerProcess("--model-repository", str(repo), *flags) as running:
        yield running


@pytest.fixture
def stub(server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with unregistering_stub(server.address) as stub:
        yield stub


@pytest.fixture
def region(stub: pb_grpc.GRPCInferenceServiceStub) -> Iterator[Path]:
    """A registered 64-byte region 'out' over a new shm object (the object's path)."""
    key = f"sluiceway_it_{uuid.uuid4().hex[:12]}"
    path = SHM / key
    path.write_bytes(bytes(64))
    stub.SystemSharedMemoryRegister(
        pb.SystemSharedMemoryRegisterRequest(name="out", key="/" + key, offset=0, byte_size=64), timeout=30
    )
    yield path
    path.unlink(missing_ok=True)


def step(
    model: str, sid: int | str, *, start: bool = False, end: bool = False, shm: bool = False
) -> pb.ModelInferRequest:
    request = tensors.build_request(model, {"x": np.ones((1, 4), np.float32)})
    if isinstance(sid, str):
        request.parameters["sequence_id"].string_param = sid
    else:
        request.parameters["sequence_id"].int64_param = sid
    request.parameters["sequence_start"].bool_param = start
    request.parameters["sequence_end"].bool_param = end
    if shm:
        out = request.outputs.add(name="out")
        out.parameters["shared_memory_region"].string_param = "out"
        out.parameters["shared_memory_byte_size"].int64_param = OUT_BYTES
    return request


def value(answer: pb.ModelInferResponse) -> float:
    got: float = tensors.decode_response(answer)["out"].tolist()[0][0]
    return got


def executions(stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> int:
    stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=30)
    return int(stats.model_stats[0].execution_count)


def refused(stub: pb_grpc.GRPCInferenceServiceStub, request: pb.ModelInferRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=30)
    return info.value


def test_an_output_object_truncated_before_the_request_is_refused_and_the_state_kept(
    stub: pb_grpc.GRPCInferenceServiceStub, region: Path
) -> None:
    """It was run, its +1 kept, then its answer failed: the next request answered 3, not 2."""
    assert value(stub.ModelInfer(step("acc", 8801, start=True), timeout=30)) == 1.0
    os.truncate(region, 0)
    runs = executions(stub, "acc")
    error = refused(stub, step("acc", 8801, shm=True))
    assert executions(stub, "acc") == runs  # refused before it was queued: not run
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "shared memory region 'out': its object" in (error.details() or "")
    assert "is now 0 bytes" in (error.details() or "")
    assert value(stub.ModelInfer(step("acc", 8801, end=True), timeout=30)) == 2.0


def _queued(server: ServerProcess, model: str) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as page:
        text = page.read().decode()
    return any(
        line.startswith("sluiceway_queue_requests") and f'model="{model}"' in line and line.endswith(" 1.0")
        for line in text.splitlines()
    )


def _both(
    stub: pb_grpc.GRPCInferenceServiceStub, first: pb.ModelInferRequest, second: pb.ModelInferRequest
) -> tuple[Future[pb.ModelInferResponse], pb.ModelInferResponse]:
    """`first` queued alone (its batch waits for a second row), then `second` fills the batch."""
    held: Future[pb.ModelInferResponse] = stub.ModelInfer.future(first, timeout=120)
    return held, stub.ModelInfer(second, timeout=120)


def test_an_output_object_truncated_while_the_request_waits_keeps_the_state(
    server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub, region: Path
) -> None:
    """The run's state was kept before its answer was written: the failed request's +1 counted."""
    held, other = _both(stub, step("acc_held", 1, start=True), step("acc_held", 2, start=True))
    assert value(held.result(timeout=120)) == 1.0 and value(other) == 1.0
    held = stub.ModelInfer.future(step("acc_held", 1, shm=True), timeout=120)
    wait_until(lambda: _queued(server, "acc_held"), "the shared-memory request to be queued")
    os.truncate(region, 0)  # after its admission checks, before its answer is written
    assert value(stub.ModelInfer(step("acc_held", 2), timeout=120)) == 2.0  # the batch runs
    with pytest.raises(grpc.RpcError) as info:
        held.result(timeout=120)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "is now 0 bytes" in (info.value.details() or "")
    after, other = _both(stub, step("acc_held", 1, end=True), step("acc_held", 2, end=True))
    assert value(after.result(timeout=120)) == 2.0 and value(other) == 3.0
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live


def test_a_start_refused_for_max_sequences_is_told_to_its_continuation(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    """Its continuation was told "it was never started (or was released long ago)"."""
    stub.ModelInfer(step("acc_limit", 11, start=True), timeout=30)
    stub.ModelInfer(step("acc_limit", 12, start=True), timeout=30)
    assert refused(stub, step("acc_limit", 13, start=True)).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    error = refused(stub, step("acc_limit", 13))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "its sequence_start request did not run (it was refused: max_sequences=2" in (
        error.details() or ""
    )
    stub.ModelInfer(step("acc_limit", 11, end=True), timeout=30)
    stub.ModelInfer(step("acc_limit", 12, end=True), timeout=30)


def test_a_string_sequence_id_is_quoted(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    """String id "5" read `sequence 5`, as integer 5 does."""
    error = refused(stub, step("acc", "5"))
    assert "inference request for sequence '5' to model 'acc'" in (error.details() or "")
    error = refused(stub, step("acc", 5))
    assert "inference request for sequence 5 to model 'acc'" in (error.details() or "")
