"""A lazy model never loaded refuses a request with several faults for the same first fault, with
the same status and message, as once it is loaded (server/protocol/request_checks.py): the early
judge had checked names before datatypes, shapes in the request's order, and neither byte sizes nor
shared-memory regions, and a version the policy does not serve or a missing sequence id loaded the
model first. Each case has a model of its own, so it is sent before that model's load and after."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.integration.test_repository_control import index
from tests.support.answers import answer
from tests.support.sequence_models import accumulator_config, accumulator_model
from tests.support.server_process import ServerProcess

LAZY = 'parameters { key: "lazy_load" value { string_value: "true" } }\n'
# Inputs listed Y, X: the loaded model checks shapes in this order, not the request's.
TWO_INPUTS = (
    'backend: "identity"\nmax_batch_size: 8\n'
    'input { name: "Y" data_type: TYPE_FP32 dims: [4] }\ninput { name: "X" data_type: TYPE_FP32 dims: [4] }\n'
    'output { name: "OY" data_type: TYPE_FP32 dims: [4] }\n'
    'output { name: "OX" data_type: TYPE_FP32 dims: [4] }\n'
)
SEQUENCE = "sequence_batching { max_sequence_idle_microseconds: 60000000 }\n"

Input = tuple[str, str, tuple[int, ...]]  # name, datatype, shape
XY: list[Input] = [("X", "FP32", (1, 4)), ("Y", "FP32", (1, 4))]


@dataclass(frozen=True)
class Case:
    inputs: list[Input]
    outputs: tuple[str, ...] = ()
    short: str = ""  # an input sent with half its bytes
    region: str = ""  # an input in this shared-memory region (not registered)
    version: str = ""
    parameters: tuple[tuple[str, str], ...] = ()  # string parameters
    config: str = TWO_INPUTS
    versions: tuple[int, ...] = (1,)
    valid: tuple[Input, ...] = tuple(XY)  # the request that loads the model
    sequence: bool = False  # an ONNX sequence model (tests/support/sequence_models.py), inputs from its graph


CASES = {
    "shapes_in_config_order": Case([("X", "FP32", (4,)), ("Y", "FP32", (4,))]),
    "datatype_before_names": Case([("X", "FP64", (1, 4)), ("Y", "FP32", (1, 4)), ("W", "FP32", (1, 4))]),
    "datatype_before_missing": Case([("X", "FP64", (1, 4))]),
    "byte_size_before_outputs": Case(XY, outputs=("nope",), short="X"),
    "byte_size_before_shapes": Case([("X", "FP32", (1, 4)), ("Y", "FP32", (1, 5))], short="X"),
    "region_before_shapes": Case([("X", "FP32", (1, 4)), ("Y", "FP32", (1, 5))], region="X"),
    "names_before_parameters": Case([*XY, ("W", "FP32", (1, 4))], parameters=(("timeout", "soon"),)),
    "version_not_served": Case(XY, version="1", versions=(1, 2)),
    "version_not_a_number": Case([*XY, ("W", "FP32", (1, 4))], version="v1"),
    "sequence_id_missing": Case([("x", "FP32", (1, 4))], valid=(("x", "FP32", (1, 4)),), sequence=True),
}


def message(model: str, case: Case, valid: bool = False) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, model_version="" if valid else case.version)
    for name, datatype, shape in case.valid if valid else case.inputs:
        tensor = request.inputs.add(name=name, datatype=datatype, shape=list(shape))
        if name == case.region and not valid:
            tensor.parameters["shared_memory_region"].string_param = "noregion"
            tensor.parameters["shared_memory_byte_size"].int64_param = 16
            continue
        data = np.zeros(shape, np.float64 if datatype == "FP64" else np.float32).tobytes()
        request.raw_input_contents.append(
            data[: len(data) // 2] if name == case.short and not valid else data
        )
    for name in () if valid else case.outputs:
        request.outputs.add(name=name)
    for key, value in () if valid else case.parameters:
        request.parameters[key].string_param = value
    if valid and case.sequence:
        request.parameters["sequence_id"].int64_param = 1
        request.parameters["sequence_start"].bool_param = True
    return request


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    repo = tmp_path_factory.mktemp("lazy_order")
    for name, case in CASES.items():
        for version in case.versions:
            (repo / name / str(version)).mkdir(parents=True)
        config = case.config
        if case.sequence:
            accumulator_model(repo / name / "1" / "model.onnx")
            config = accumulator_config()
        (repo / name / "config.pbtxt").write_text(config + LAZY)
    with ServerProcess("--model-repository", str(repo), "--allow-client-shm") as server:
        yield server.address


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_model_not_loaded_refuses_as_it_does_once_loaded(address: str, name: str) -> None:
    case = CASES[name]
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        before = answer(stub, message(name, case))
        assert "not loaded (lazy)" in index(address)[name][0][2], before  # refused without loading
        assert answer(stub, message(name, case, valid=True)) == ("OK", "")  # loads it
        after = answer(stub, message(name, case))
    assert after[0] != "OK"
    assert before == after
