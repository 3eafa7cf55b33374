"""Protocol edge cases a fuzzer found, over one real server: a version number above int64 on every
RPC that takes one, known parameters sent with no value, a BYTES length prefix running past the
data, a zero-size shape past the dimension bound, and load overrides that no request could use."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.repositories import demo_repository, write_model
from tests.support.server_process import ServerProcess

ABOVE_INT64 = str(2**63)  # 19 digits, one above int64's largest
NOT_A_VERSION = f"model_version '{ABOVE_INT64}' is not a version number (at most {2**63 - 1}"
STRINGS = (
    'backend: "identity"\nmax_batch_size: 8\ndynamic_batching { }\n'
    'input { name: "INPUT0" data_type: TYPE_STRING dims: [3] }\n'
    'output { name: "OUTPUT0" data_type: TYPE_STRING dims: [3] }\n'
)
VARIABLE = (
    'backend: "identity"\nmax_batch_size: 0\n'
    'input { name: "INPUT0" data_type: TYPE_FP32 dims: [-1, -1] }\n'
    'output { name: "OUTPUT0" data_type: TYPE_FP32 dims: [-1, -1] }\n'
)


def _identity(repo: Path, name: str, config: str) -> None:
    (repo / name / "1").mkdir(parents=True)  # the identity backend reads no model file
    (repo / name / "config.pbtxt").write_text(config)


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    repo = tmp_path_factory.mktemp("fuzz_edges")
    demo = demo_repository()
    write_model(repo, "mlp", demo / "mlp" / "1" / "model.onnx", (demo / "mlp" / "config.pbtxt").read_text())
    _identity(repo, "strings", STRINGS)
    _identity(repo, "variable", VARIABLE)
    _identity(repo, "overridden", STRINGS)  # loaded only by the override test
    args = ["--model-repository", str(repo), "--model-control-mode", "explicit"]
    loads = ["--load-model", "mlp", "--load-model", "strings", "--load-model", "variable"]
    with ServerProcess(*args, *loads) as server, grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def _mlp_request(version: str = "") -> pb.ModelInferRequest:
    rows = np.zeros((1, 64), np.float32)
    tensor = pb.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[1, 64])
    return pb.ModelInferRequest(
        model_name="mlp", model_version=version, inputs=[tensor], raw_input_contents=[rows.tobytes()]
    )


def _refused(call: Callable[[], object]) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    return caught.value.details() or ""


def test_a_version_above_int64_is_invalid_argument_on_every_rpc_taking_one(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    # It had been "not found" (ModelReady: OK, not ready), unlike a 20-digit version.
    calls: dict[str, Callable[[], object]] = {
        "ModelReady": lambda: stub.ModelReady(
            pb.ModelReadyRequest(name="mlp", version=ABOVE_INT64), timeout=30
        ),
        "ModelMetadata": lambda: stub.ModelMetadata(
            pb.ModelMetadataRequest(name="mlp", version=ABOVE_INT64), timeout=30
        ),
        "ModelConfig": lambda: stub.ModelConfig(
            pb.ModelConfigRequest(name="mlp", version=ABOVE_INT64), timeout=30
        ),
        "ModelStatistics": lambda: stub.ModelStatistics(
            pb.ModelStatisticsRequest(name="mlp", version=ABOVE_INT64), timeout=30
        ),
        "ModelInfer": lambda: stub.ModelInfer(_mlp_request(ABOVE_INT64), timeout=30),
    }
    for rpc, call in calls.items():
        assert NOT_A_VERSION in _refused(call), rpc
    answers = list(stub.ModelStreamInfer(iter([_mlp_request(ABOVE_INT64), _mlp_request()]), timeout=30))
    assert (
        answers[0].error_message.startswith("INVALID_ARGUMENT: ")
        and NOT_A_VERSION in answers[0].error_message
    )
    assert answers[1].error_message == ""  # the stream goes on


@pytest.mark.parametrize("name", ["sequence_start", "sequence_end", "triton_enable_empty_final_response"])
def test_a_bool_parameter_with_no_value_is_refused_like_the_others(
    stub: pb_grpc.GRPCInferenceServiceStub, name: str
) -> None:
    # sequence_start/sequence_end with no value had been read as false (timeout, priority,
    # sequence_id and latest_frame_wins were refused); the stream flag took any type as false.
    request = _mlp_request()
    request.parameters[name].CopyFrom(pb.InferParameter())
    assert (
        _refused(lambda: stub.ModelInfer(request, timeout=30))
        == f"parameter '{name}' must be a bool, got nothing"
    )
    request.parameters[name].CopyFrom(pb.InferParameter(bool_param=False))
    assert stub.ModelInfer(request, timeout=30).outputs


def test_a_first_bytes_length_past_the_data_names_the_element(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    # It had been "expected 3 string elements ..., got 1", as if the data held one element.
    tensor = pb.ModelInferRequest.InferInputTensor(name="INPUT0", datatype="BYTES", shape=[1, 3])
    raw = struct.pack("<I", 2**32 - 1) + b"ab"
    request = pb.ModelInferRequest(model_name="strings", inputs=[tensor], raw_input_contents=[raw])
    assert _refused(lambda: stub.ModelInfer(request, timeout=30)) == (
        "input 'INPUT0': BYTES element 0 is cut short: its length prefix says 4294967295 bytes, the "
        "data has 2 after it"
    )


def test_a_zero_size_shape_past_the_bound_names_the_real_limit(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    # It had said the shape "exceeds 1099511627776 elements" though it has none.
    def call(shape: list[int]) -> pb.ModelInferResponse:
        tensor = pb.ModelInferRequest.InferInputTensor(name="INPUT0", datatype="FP32", shape=shape)
        request = pb.ModelInferRequest(model_name="variable", inputs=[tensor], raw_input_contents=[b""])
        return stub.ModelInfer(request, timeout=30)

    details = _refused(lambda: call([2**61, 0]))
    assert details.startswith(f"input 'INPUT0': shape [{2**61}, 0]: its nonzero dimensions multiply past ")
    assert "elements" not in details.split("(")[0]
    assert list(call([100_000, 0]).outputs[0].shape) == [100_000, 0]


def _load(
    stub: pb_grpc.GRPCInferenceServiceStub, config: dict[str, object]
) -> pb.RepositoryModelLoadResponse:
    request = pb.RepositoryModelLoadRequest(model_name="overridden")
    request.parameters["config"].string_param = json.dumps(config)
    return stub.RepositoryModelLoad(request, timeout=60)


def test_load_overrides_no_request_could_use_are_refused_naming_the_field(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    io = {
        "backend": "identity",
        "max_batch_size": 4,
        "input": [{"name": "INPUT0", "data_type": "TYPE_STRING", "dims": [3]}],
        "output": [{"name": "OUTPUT0", "data_type": "TYPE_STRING", "dims": [3]}],
    }
    tensor = {"data_type": "TYPE_FP32", "dims": [2**62, 2**62]}  # a pair the identity backend takes
    huge = {**io, "input": [{"name": "INPUT0", **tensor}], "output": [{"name": "OUTPUT0", **tensor}]}
    details = _refused(lambda: _load(stub, huge))
    assert "input 'INPUT0': dims [4611686018427387904, 4611686018427387904]: its fixed dimensions" in details
    assert "past 1099511627776 (2**40)" in details
    delay = {**io, "dynamic_batching": {"max_queue_delay_microseconds": str(2**64 - 1)}}
    details = _refused(lambda: _load(stub, delay))
    assert (
        f"dynamic_batching.max_queue_delay_microseconds {2**64 - 1} exceeds 3600000000 (one hour)" in details
    )
    # Priority levels allocate nothing per level: the most uint64 holds loads and serves.
    levels = {**io, "dynamic_batching": {"priority_levels": str(2**64 - 1), "default_priority_level": "1"}}
    _load(stub, levels)
    tensor = pb.ModelInferRequest.InferInputTensor(name="INPUT0", datatype="BYTES", shape=[1, 3])
    request = pb.ModelInferRequest(
        model_name="overridden", inputs=[tensor], raw_input_contents=[struct.pack("<I", 0) * 3]
    )
    request.parameters["priority"].uint64_param = 2**64 - 2
    assert list(stub.ModelInfer(request, timeout=30).outputs[0].shape) == [1, 3]
