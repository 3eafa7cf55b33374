"""A repository of odd models (every datatype, no config, broken ones) and a server on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import onnx
import pytest
from onnx import TensorProto, helper

from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.repositories import demo_repository, write_model
from tests.support.server_process import ServerProcess

# Wire datatype -> ONNX element type, for an Identity per datatype.
IDENTITY_TYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def identity_model(path: Path) -> Path:
    """in_<TYPE> [N,3] -> out_<TYPE> [N,3] for every datatype; no config.pbtxt needed."""
    nodes, inputs, outputs = [], [], []
    for wire, elem in IDENTITY_TYPES.items():
        inputs.append(helper.make_tensor_value_info(f"in_{wire}", elem, ["N", 3]))
        outputs.append(helper.make_tensor_value_info(f"out_{wire}", elem, ["N", 3]))
        nodes.append(helper.make_node("Identity", [f"in_{wire}"], [f"out_{wire}"]))
    graph = helper.make_graph(nodes, "identity", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


WARMUP = """
name: "{name}"
max_batch_size: 8
dynamic_batching {{ }}
model_warmup [ {{
  name: "zeros" batch_size: 4 count: 2
  inputs {{ key: "{input}" value: {{ data_type: TYPE_FP32 dims: [ 64 ] zero_data: true }} }}
}} ]
"""


# A 1-row request waits in the queue until 4 rows are queued, or for 60 s: held there by the batching
# rules rather than by a busy instance, so a test can act on it while it is queued for certain. The
# queue has room for one request, so whether one is queued is observable from outside (another is
# refused "queue is full"). See test_protocol.py's cancellation test.
HELD_UNTIL_FULL = """
max_batch_size: 4
dynamic_batching {
  preferred_batch_size: [ 4 ]
  max_queue_delay_microseconds: 60000000
  default_queue_policy { max_queue_size: 1 }
}
parameters { key: "idle_dispatch" value: { string_value: "false" } }
"""


@pytest.fixture(scope="session")
def demo_repo() -> Path:
    return demo_repository()


@pytest.fixture(scope="session")
def zoo_repo(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("zoo")
    files = tmp_path_factory.mktemp("files")
    write_model(repo, "identity", identity_model(files / "identity.onnx"), None)
    write_model(
        repo, "mlp", demo_repo / "mlp" / "1" / "model.onnx", (demo_repo / "mlp" / "config.pbtxt").read_text()
    )
    write_model(
        repo,
        "resnet",
        demo_repo / "resnet" / "1" / "model.onnx",
        (demo_repo / "resnet" / "config.pbtxt").read_text(),
    )
    mlp = demo_repo / "mlp" / "1" / "model.onnx"
    write_model(repo, "warm", mlp, WARMUP.format(name="warm", input="features"))
    write_model(repo, "badwarm", mlp, WARMUP.format(name="badwarm", input="nope"))
    write_model(repo, "cached", mlp, "response_cache { enable: true }\n")
    write_model(repo, "held", mlp, HELD_UNTIL_FULL)
    corrupt = files / "corrupt.onnx"
    corrupt.write_bytes(b"this is not an onnx model")
    write_model(repo, "corrupt", corrupt, None)
    write_model(
        repo,
        "badconfig",
        demo_repo / "mlp" / "1" / "model.onnx",
        "max_batch_size: 8\nsequence_batcher { }\n",
    )
    return repo


@pytest.fixture(scope="session")
def zoo_server(zoo_repo: Path) -> Iterator[ServerProcess]:
    with ServerProcess("--model-repository", str(zoo_repo)) as server:
        yield server


@pytest.fixture()
def stub(zoo_server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(zoo_server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)
