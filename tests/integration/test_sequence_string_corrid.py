"""A string sequence id reaches the model's STRING CORRID control input byte for byte, NULs too:
trailing NULs had been dropped ("a\\x00" reached the model as b"a", "\\x00" as b"", the id of no
sequence) while the server kept "a" and "a\\x00" as two sequences (README "Stateful sequences")."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from protos.wire import unpack_bytes
from tests.support import sequence_models as sm
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    repo = tmp_path_factory.mktemp("corrid_repo")
    model = sm.string_corrid_model(tmp_path_factory.mktemp("corrid_models") / "corrid.onnx")
    write_model(repo, "corrid", model, sm.STRING_CORRID_CONFIG)
    with (
        ServerProcess("--model-repository", str(repo)) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def step(
    stub: pb_grpc.GRPCInferenceServiceStub, sid: str, x: float, start: bool = False, end: bool = False
) -> tuple[float, bytes]:
    """One request of sequence `sid`: (the accumulated sum, the CORRID the model received)."""
    request = pb.ModelInferRequest(model_name="corrid")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 1])
    request.raw_input_contents.append(np.float32([[x]]).tobytes())
    request.parameters["sequence_id"].string_param = sid
    request.parameters["sequence_start"].bool_param = start
    request.parameters["sequence_end"].bool_param = end
    response = stub.ModelInfer(request, timeout=30)
    raw = dict(zip((o.name for o in response.outputs), response.raw_output_contents, strict=True))
    corrid = unpack_bytes(raw["corrid_out"], 1)[0]
    assert isinstance(corrid, bytes)
    return float(np.frombuffer(raw["out"], np.float32)[0]), corrid


@pytest.mark.parametrize("sid", ["a\x00", "a\x00\x00", "\x00", "\x00a\x00"])
def test_the_model_receives_every_byte_of_a_string_id(
    stub: pb_grpc.GRPCInferenceServiceStub, sid: str
) -> None:
    assert step(stub, sid, 1.0, start=True, end=True) == (1.0, sid.encode())


def test_ids_differing_in_trailing_nuls_are_separate_sequences_and_the_model_tells_them_apart(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    ids = ["b", "b\x00", "b\x00\x00"]
    for n, sid in enumerate(ids):
        assert step(stub, sid, 10.0**n, start=True) == (10.0**n, sid.encode())
    for n, sid in enumerate(ids):  # each continues its own state, under its own CORRID
        assert step(stub, sid, 10.0**n, end=True) == (2 * 10.0**n, sid.encode())
