"""Over a real server: one stream sends 8 frames at once to a lazy `preserve_ordering` identity
model that is not loaded, on its first load and again after another model's load evicted it (memory
budget). Its two instances run 5 ms and 200 ms, so answers left as they completed would come out of
order (frame 1 last, in every trial before the fix); they come in the order sent, as once loaded."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.server_process import ServerProcess, wait_until

ORDERED = """
backend: "identity"
max_batch_size: 1
input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]
dynamic_batching { preserve_ordering: true }
instance_group [ { count: 2 kind: KIND_CPU } ]
parameters { key: "execute_delay_ms" value: { string_value: "5" } }
parameters { key: "instance_wise_delay_multiplier" value: { string_value: "40" } }
parameters { key: "lazy_load" value { string_value: "true" } }
"""
OTHER = ORDERED.replace("dynamic_batching { preserve_ordering: true }", "dynamic_batching { }")
FRAMES = 8


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("repo")
    for name, config in (("ordered", ORDERED), ("other", OTHER)):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(config)
        # 3 MiB of files each: a 5 MiB budget holds one of the two, each load evicts the other.
        (repo / name / "1" / "weights.bin").write_bytes(b"\0" * (3 << 20))
    process = ServerProcess("--model-repository", str(repo), "--model-memory-budget-mb", "5").start()
    try:
        yield process
    finally:
        process.terminate()


def frame(model: str, i: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, id=str(i))
    request.inputs.add(name="x", datatype="FP32", shape=[1, 1])
    request.raw_input_contents.append(np.full((1, 1), i, np.float32).tobytes())
    return request


def ready(stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> bool:
    return bool(stub.ModelReady(pb.ModelReadyRequest(name=model), timeout=10).ready)  # never loads it


def answered(stub: pb_grpc.GRPCInferenceServiceStub) -> list[tuple[str, str]]:
    frames = [frame("ordered", i) for i in range(FRAMES)]  # written at once
    return [(a.infer_response.id, a.error_message) for a in stub.ModelStreamInfer(iter(frames), timeout=60)]


def test_frames_waiting_for_a_preserve_ordering_models_load_are_answered_in_order(
    server: ServerProcess,
) -> None:
    in_order = [(str(i), "") for i in range(FRAMES)]
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert not ready(stub, "ordered")
        assert answered(stub) == in_order  # its first load
        stub.ModelInfer(frame("other", 0), timeout=60)  # evicts it
        wait_until(lambda: not ready(stub, "ordered"), "'ordered' evicted by 'other''s load")
        assert answered(stub) == in_order  # its reload
        assert answered(stub) == in_order  # loaded
