"""A request for an evicted lazy model that its last load's signature refuses is answered
INVALID_ARGUMENT without loading the model (it had loaded it, evicting another)."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.integration.test_repository_control import index
from tests.support.server_process import ServerProcess

# An identity model whose version directory holds 3 MiB: its footprint is at least that, so a
# 5 MiB budget holds one of them, never two.
IDENTITY = """
backend: "identity"
max_batch_size: 8
input { name: "INPUT0" data_type: TYPE_FP32 dims: [4] }
output { name: "OUTPUT0" data_type: TYPE_FP32 dims: [4] }
parameters { key: "lazy_load" value { string_value: "true" } }
"""
FIRST_LOAD = "first request, loading it (lazy_load)"


def identity_model(repo: Path, name: str) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(IDENTITY)
    (repo / name / "1" / "weights.bin").write_bytes(b"\0" * (3 << 20))


def request(model: str, name: str = "INPUT0", shape: tuple[int, ...] = (1, 4)) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name=model)
    message.inputs.add(name=name, datatype="FP32", shape=list(shape))
    message.raw_input_contents.append(np.zeros(shape, np.float32).tobytes())
    return message


def test_an_invalid_request_for_an_evicted_model_is_refused_without_loading_it(tmp_path: Path) -> None:
    for name in ("a", "b"):
        identity_model(tmp_path, name)
    with (
        ServerProcess("--model-repository", str(tmp_path), "--model-memory-budget-mb", "5") as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stub.ModelInfer(request("a"), timeout=60)
        stub.ModelInfer(request("b"), timeout=60)  # evicts a
        # Both loads' lines came before b's answer, but the output pump can lag behind it (it had
        # read only a's line when the count below was taken, once in the full suite).
        server.wait_for_output(FIRST_LOAD, times=2)
        assert "evicted" in index(server.address)["a"][0][2]
        for invalid, field in (
            (request("a", name="INPUT1"), "INPUT1"),  # no such input
            (request("a", shape=(1, 5)), "INPUT0"),  # its shape
            (request("a", shape=(9, 4)), "batch-size must be <= 8"),  # more rows than max_batch_size
        ):
            with pytest.raises(grpc.RpcError) as refused:
                stub.ModelInfer(invalid, timeout=60)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
            assert field in (refused.value.details() or "")
        shown = index(server.address)
        assert (
            shown["b"][0][1] == "READY" and "evicted" in shown["a"][0][2]
        )  # nothing loaded, nothing evicted
        assert server.output().count(FIRST_LOAD) == 2
        stub.ModelInfer(request("a"), timeout=60)  # a valid one loads it, as before
        assert "evicted" in index(server.address)["b"][0][2]
