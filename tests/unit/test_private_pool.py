"""Our generated modules build their descriptors in protos.pool.POOL, never the default pool,
so tritonclient's modules for the same package can be imported beside them."""

from __future__ import annotations

import importlib.util
from types import ModuleType

import pytest
from google.protobuf import descriptor_pool

from protos import grpc_service_pb2 as pb
from protos import model_config_pb2 as mc
from protos.pool import POOL
from server.protocol.reflection_pool import reflection_pool
from tests.support.server_process import REPO_ROOT


def _generate_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate", REPO_ROOT / "protos" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_files_are_in_the_private_pool_only() -> None:
    assert pb.DESCRIPTOR.pool is POOL and mc.DESCRIPTOR.pool is POOL
    assert POOL is not descriptor_pool.Default()
    assert pb.DESCRIPTOR.dependencies[0] is mc.DESCRIPTOR  # the import resolved in the same pool
    for name in ("protos/grpc_service.proto", "protos/model_config.proto"):
        with pytest.raises(KeyError):
            descriptor_pool.Default().FindFileByName(name)
    assert pb.ModelInferRequest.DESCRIPTOR.full_name == "inference.ModelInferRequest"  # wire name


def test_generator_refuses_protoc_output_it_does_not_recognise() -> None:
    generate = _generate_module()
    source = "from google.protobuf import descriptor_pool as _descriptor_pool\nDESCRIPTOR = ...\n"
    with pytest.raises(SystemExit, match="exactly once"):
        generate.in_private_pool(source, "x_pb2.py")


def test_reflection_pool_holds_each_file_after_its_imports() -> None:
    pool = reflection_pool(pb.DESCRIPTOR)
    assert pool.FindFileByName("protos/model_config.proto").name == "protos/model_config.proto"
    service = pool.FindServiceByName("inference.GRPCInferenceService")
    assert service.methods_by_name["ModelConfig"].output_type.fields_by_name[
        "config"
    ].message_type.full_name == ("inference.ModelConfig")
