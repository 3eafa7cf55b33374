"""Over a real server: ModelStatistics lists models by name and each model's versions oldest
first, as Triton's ordered maps do (the statistics tester of the twenty-second session found ours
newest first). Version 10 comes after 2: versions are numbers, not strings."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.server_process import ServerProcess

CONFIG = """
name: "{name}"
backend: "identity"
max_batch_size: 8
version_policy {{ all {{ }} }}
input {{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }}
output {{ name: "y" data_type: TYPE_FP32 dims: [ 4 ] }}
"""
VERSIONS = ("10", "1", "2")  # made in this order, so neither file order nor string order passes


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    repo: Path = tmp_path_factory.mktemp("repo")
    for name in ("zeta", "alpha"):
        for version in VERSIONS:
            (repo / name / version).mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(CONFIG.format(name=name))
    with (
        ServerProcess("--model-repository", str(repo)) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def listed(stub: pb_grpc.GRPCInferenceServiceStub, name: str = "") -> list[tuple[str, str]]:
    answer = stub.ModelStatistics(pb.ModelStatisticsRequest(name=name), timeout=30)
    return [(s.name, s.version) for s in answer.model_stats]


def test_a_models_versions_are_listed_oldest_first(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    assert listed(stub, "zeta") == [("zeta", "1"), ("zeta", "2"), ("zeta", "10")]


def test_every_model_is_listed_by_name_then_version(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    assert listed(stub) == [(name, v) for name in ("alpha", "zeta") for v in ("1", "2", "10")]
