"""Server reflection describes every service it lists, with the files their types come from.

Our message classes live in a private descriptor pool (protos/pool.py), grpc's health and
reflection services in protobuf's default pool; reflection must answer for both.
"""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.support.server_process import ServerProcess


def _ask(
    address: str, request: reflection_pb2.ServerReflectionRequest
) -> reflection_pb2.ServerReflectionResponse:
    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        (answer,) = list(stub.ServerReflectionInfo(iter([request]), timeout=30))
    return answer


def _pool_from(answer: reflection_pb2.ServerReflectionResponse) -> descriptor_pool.DescriptorPool:
    """The files of one answer built into a fresh pool, as grpcurl or a dynamic client would."""
    assert answer.WhichOneof("message_response") == "file_descriptor_response", answer.error_response
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(f)
        for f in answer.file_descriptor_response.file_descriptor_proto
    ]
    pool = descriptor_pool.DescriptorPool()
    pending = {f.name: f for f in files}
    while pending:  # dependencies first, whatever order the server sent them in
        ready = [f for f in pending.values() if not set(f.dependency) & set(pending)]
        assert ready, f"files import something the answer does not hold: {sorted(pending)}"
        for f in ready:
            pool.Add(f)
            del pending[f.name]
    return pool


def test_reflection_describes_the_inference_service_and_its_types(zoo_server: ServerProcess) -> None:
    answer = _ask(
        zoo_server.address,
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="inference.GRPCInferenceService"),
    )
    pool = _pool_from(answer)
    service = pool.FindServiceByName("inference.GRPCInferenceService")
    infer = service.methods_by_name["ModelInfer"]
    assert infer.input_type.full_name == "inference.ModelInferRequest"
    assert "raw_input_contents" in infer.input_type.fields_by_name
    # A type from model_config.proto, which grpc_service.proto imports: sent along with it.
    config = pool.FindMessageTypeByName("inference.ModelConfigResponse").fields_by_name["config"]
    assert config.message_type.full_name == "inference.ModelConfig"
    assert config.message_type.file.name == "protos/model_config.proto"


def test_reflection_describes_a_message_by_name(zoo_server: ServerProcess) -> None:
    answer = _ask(
        zoo_server.address,
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="inference.ModelConfig"),
    )
    assert (
        "max_batch_size" in _pool_from(answer).FindMessageTypeByName("inference.ModelConfig").fields_by_name
    )


def test_reflection_still_describes_grpc_own_services(zoo_server: ServerProcess) -> None:
    for name in ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"):
        answer = _ask(zoo_server.address, reflection_pb2.ServerReflectionRequest(file_containing_symbol=name))
        assert _pool_from(answer).FindServiceByName(name).full_name == name


def test_reflection_answers_an_unknown_symbol_not_found(zoo_server: ServerProcess) -> None:
    answer = _ask(
        zoo_server.address,
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="inference.NoSuchThing"),
    )
    assert answer.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
