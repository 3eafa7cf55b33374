"""A lazy model never loaded yet judges a request by its config (or its graph, read without a
session) before loading: an invalid request is refused INVALID_ARGUMENT naming the field, and the
model stays not loaded (it had been loaded, then the request refused); a valid one loads it."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.integration.test_repository_control import index
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess

LAZY = 'parameters { key: "lazy_load" value { string_value: "true" } }\n'
FIRST_LOAD = "first request, loading it (lazy_load)"
# Completed from the graph (mlp: features FP32 [N, 64] -> scores FP32 [N, 2]; max_batch_size 64).
FROM_GRAPH = 'platform: "onnxruntime_onnx"\n' + LAZY
IDENTITY = (
    'backend: "identity"\nmax_batch_size: 8\n'
    'input { name: "features" data_type: TYPE_FP32 dims: [64] }\n'
    'output { name: "scores" data_type: TYPE_FP32 dims: [64] }\n' + LAZY
)


def request(
    model: str,
    name: str = "features",
    shape: tuple[int, ...] = (1, 64),
    datatype: str = "FP32",
    output: str = "",
) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name=model)
    message.inputs.add(name=name, datatype=datatype, shape=list(shape))
    dtype = np.float64 if datatype == "FP64" else np.float32
    message.raw_input_contents.append(np.zeros(shape, dtype).tobytes())
    if output:
        message.outputs.add(name=output)
    return message


def invalid_requests(model: str, max_batch_size: int) -> list[tuple[pb.ModelInferRequest, str]]:
    return [
        (request(model, name="INPUT1"), "INPUT1"),  # no such input
        (request(model, datatype="FP64"), "FP64"),  # its datatype
        (request(model, shape=(1, 65)), "features"),  # its dims
        (request(model, shape=(64,)), "features"),  # its rank
        (request(model, shape=(max_batch_size + 1, 64)), f"batch-size must be <= {max_batch_size}"),
        (request(model, output="nope"), "nope"),  # no such output
    ]


MODELS = ("declared", "graph", "identity")


def test_a_model_never_loaded_refuses_an_invalid_request_without_loading(
    demo_repo: Path, tmp_path: Path
) -> None:
    mlp = demo_repo / "mlp"
    declared = (mlp / "config.pbtxt").read_text().replace('"mlp"', '"declared"') + LAZY
    write_model(tmp_path, "declared", mlp / "1" / "model.onnx", declared)
    write_model(tmp_path, "graph", mlp / "1" / "model.onnx", FROM_GRAPH)
    (tmp_path / "identity" / "1").mkdir(parents=True)
    (tmp_path / "identity" / "config.pbtxt").write_text(IDENTITY)
    with (
        ServerProcess("--model-repository", str(tmp_path)) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for model, max_batch_size in (("declared", 128), ("graph", 64), ("identity", 8)):
            for invalid, field in invalid_requests(model, max_batch_size):
                with pytest.raises(grpc.RpcError) as refused:
                    stub.ModelInfer(invalid, timeout=60)
                details = refused.value.details() or ""
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (model, details)
                assert field in details, (model, details)
        assert server.output().count(FIRST_LOAD) == 0  # none of them loaded
        assert all("not loaded (lazy)" in index(server.address)[m][0][2] for m in MODELS)
        for model in MODELS:
            answer = stub.ModelInfer(request(model, shape=(2, 64)), timeout=60)  # a valid one loads it
            assert answer.outputs[0].name == "scores" and answer.outputs[0].shape[0] == 2
        server.wait_for_output(FIRST_LOAD, times=3)  # the output pump can lag behind the answers
        assert server.output().count(FIRST_LOAD) == 3
        assert all(index(server.address)[m][0][1] == "READY" for m in MODELS)
