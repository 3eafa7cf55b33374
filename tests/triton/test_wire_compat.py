"""Our .proto subset must match the public protocol field for field.

tritonclient ships generated modules for the same protocol (package `inference`); ours are built
in a private descriptor pool (protos/pool.py), so both are imported here and compared directly.
"""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2
from tritonclient.grpc import model_config_pb2 as triton_config
from tritonclient.grpc import service_pb2 as triton_service

from protos import grpc_service_pb2 as our_service
from protos import model_config_pb2 as our_config


def _file(module: object) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    module.DESCRIPTOR.CopyToProto(proto)  # type: ignore[attr-defined]
    return proto


def _messages(
    prefix: str, messages: list[descriptor_pb2.DescriptorProto]
) -> dict[str, descriptor_pb2.DescriptorProto]:
    found: dict[str, descriptor_pb2.DescriptorProto] = {}
    for msg in messages:
        name = f"{prefix}.{msg.name}"
        found[name] = msg
        found.update(_messages(name, list(msg.nested_type)))
    return found


def _enums(prefix: str, file_or_msg: object) -> dict[str, descriptor_pb2.EnumDescriptorProto]:
    found = {f"{prefix}.{e.name}": e for e in file_or_msg.enum_type}  # type: ignore[attr-defined]
    for msg in getattr(file_or_msg, "message_type", []) or getattr(file_or_msg, "nested_type", []):
        found.update(_enums(f"{prefix}.{msg.name}", msg))
    return found


def _field_type_name(name: str) -> str:
    # Ours live in protos/*.proto, theirs at the root: compare fully qualified type names only.
    return name.lstrip(".")


@pytest.fixture(scope="module")
def pairs() -> list[tuple[descriptor_pb2.FileDescriptorProto, descriptor_pb2.FileDescriptorProto]]:
    return [(_file(our_config), _file(triton_config)), (_file(our_service), _file(triton_service))]


def test_every_message_and_field_matches_the_public_protocol(pairs: list) -> None:
    checked = 0
    for ours, theirs in pairs:
        assert ours.package == theirs.package == "inference"
        their_msgs = _messages("inference", list(theirs.message_type))
        for name, msg in _messages("inference", list(ours.message_type)).items():
            assert name in their_msgs, f"{name} is not a message of the public protocol"
            their_fields = {f.name: f for f in their_msgs[name].field}
            for field in msg.field:
                assert field.name in their_fields, f"{name}.{field.name} is not in the public protocol"
                theirs_f = their_fields[field.name]
                where = f"{name}.{field.name}"
                assert field.number == theirs_f.number, where
                assert field.type == theirs_f.type, where
                assert field.label == theirs_f.label, where
                assert _field_type_name(field.type_name) == _field_type_name(theirs_f.type_name), where
                assert field.HasField("oneof_index") == theirs_f.HasField("oneof_index"), where
                checked += 1
    assert checked > 150


def test_every_enum_value_matches_the_public_protocol(pairs: list) -> None:
    for ours, theirs in pairs:
        their_enums = _enums("inference", theirs)
        for name, enum in _enums("inference", ours).items():
            assert name in their_enums, name
            their_values = {v.name: v.number for v in their_enums[name].value}
            for value in enum.value:
                assert their_values.get(value.name) == value.number, f"{name}.{value.name}"


def test_every_rpc_matches_the_public_service(pairs: list) -> None:
    ours, theirs = pairs[1]
    (our_service,) = ours.service
    their_methods = {m.name: m for m in next(s for s in theirs.service if s.name == our_service.name).method}
    assert our_service.name == "GRPCInferenceService"
    for method in our_service.method:
        theirs_m = their_methods[method.name]
        assert method.input_type == theirs_m.input_type, method.name
        assert method.output_type == theirs_m.output_type, method.name
        assert method.client_streaming == theirs_m.client_streaming, method.name
        assert method.server_streaming == theirs_m.server_streaming, method.name
    assert len(our_service.method) == 20
