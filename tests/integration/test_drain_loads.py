"""SIGTERM while a load is under way, over a real server: the call waiting for it (a
RepositoryModelLoad, or a lazy model's first request) is answered UNAVAILABLE "server is shutting
down" at once. The drain cancelled the load and the waiting handler with it, which left the call
unanswered until grpc's own stop, a whole grace later ("Cancelling all calls", 22 s for 20)."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.server_process import ServerProcess, wait_until

SLOW = """
backend: "identity"
max_batch_size: 8
input { name: "INPUT0" data_type: TYPE_FP32 dims: [4] }
output { name: "OUTPUT0" data_type: TYPE_FP32 dims: [4] }
parameters { key: "creation_delay_sec" value { string_value: "3" } }
"""


def repository(tmp_path: Path, lazy: bool) -> Path:
    (tmp_path / "slow" / "1").mkdir(parents=True)
    extra = 'parameters { key: "lazy_load" value { string_value: "true" } }\n' if lazy else ""
    (tmp_path / "slow" / "config.pbtxt").write_text(SLOW + extra)
    return tmp_path


def loading(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10)
    return any(model.name == "slow" and model.state == "LOADING" for model in index.models)


@pytest.mark.parametrize("kind", ["load", "lazy"])
def test_a_call_waiting_for_a_load_is_answered_when_the_drain_stops_it(tmp_path: Path, kind: str) -> None:
    args = ["--model-repository", str(repository(tmp_path, kind == "lazy")), "--shutdown-grace-s", "30"]
    if kind == "load":
        args += ["--model-control-mode", "explicit"]
    server = ServerProcess(*args).start()
    outcome: list[grpc.RpcError | None] = []

    def call() -> None:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            try:
                if kind == "load":
                    stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="slow"), timeout=120)
                else:
                    request = pb.ModelInferRequest(model_name="slow")
                    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 4])
                    request.raw_input_contents.append(np.zeros((1, 4), np.float32).tobytes())
                    stub.ModelInfer(request, timeout=120)
                outcome.append(None)
            except grpc.RpcError as err:
                outcome.append(err)

    caller = threading.Thread(target=call)
    caller.start()
    try:
        wait_until(lambda: loading(server.address), "the load to begin")
    finally:
        assert server.terminate(timeout_s=120) == 0
        caller.join(120)
    (err,) = outcome
    assert err is not None and err.code() == grpc.StatusCode.UNAVAILABLE
    assert "server is shutting down" in (err.details() or ""), err.details()
