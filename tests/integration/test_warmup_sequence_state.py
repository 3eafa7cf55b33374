"""A sequence model with implicit state and a `model_warmup` loads READY (README "Stateful
sequences"): a tester's sample with only `x` failed the load with onnxruntime's "Required inputs
(['acc']) are missing from input feed (['x'])", one with `x` and `acc` with "inputs ['acc'] are not
inputs of the model". The warm-up opens no sequence and leaves no state behind."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support import sequence_models as sm
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess

X = 'inputs { key: "x" value { data_type: TYPE_FP32 dims: [ %d ] random_data: true } }'
ACC = 'inputs { key: "acc" value { data_type: TYPE_FP32 dims: [ %d ] zero_data: true } }'


def warmup(*inputs: str) -> str:
    return f'model_warmup {{ name: "w" batch_size: 2 count: 3 {" ".join(inputs)} }}\n'


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    repo = tmp_path_factory.mktemp("warm_seq_repo")
    files = tmp_path_factory.mktemp("warm_seq_models")
    acc = sm.accumulator_model(files / "acc.onnx")
    write_model(repo, "warm_x", acc, sm.accumulator_config() + warmup(X % 4))
    write_model(repo, "warm_xacc", acc, sm.accumulator_config() + warmup(X % 4, ACC % 4))
    write_model(repo, "warm_bad_acc", acc, sm.accumulator_config() + warmup(X % 4, ACC % 3))
    controls = sm.controls_model(files / "controls.onnx")
    write_model(repo, "warm_controls", controls, sm.CONTROLS_CONFIG + warmup(X % 1))
    # One live sequence at most: one the warm-up left behind would refuse the test's start.
    args = ("--model-repository", str(repo), "--max-sequences", "1")
    with ServerProcess(*args) as server, grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def step(stub: pb_grpc.GRPCInferenceServiceStub, model: str, value: float, **flags: bool) -> list[float]:
    req = pb.ModelInferRequest(model_name=model)
    req.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    req.raw_input_contents.append(np.full((1, 4), value, np.float32).tobytes())
    req.parameters["sequence_id"].int64_param = 7
    for name, on in flags.items():
        req.parameters[f"sequence_{name}"].bool_param = on
    out = stub.ModelInfer(req, timeout=30)
    index = [o.name for o in out.outputs].index("out")
    return np.frombuffer(out.raw_output_contents[index], np.float32).tolist()


def test_a_sample_of_the_model_inputs_warms_a_stateful_model(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    index = {m.name: m for m in stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=30).models}
    for name in ("warm_x", "warm_xacc", "warm_controls"):
        assert index[name].state == "READY", (name, index[name].reason)
    # The warm-up's state is not a sequence's: a start begins from the initial state (zeros).
    for model in ("warm_x", "warm_xacc"):
        assert step(stub, model, 1.0, start=True) == [1.0] * 4
        assert step(stub, model, 2.0, end=True) == [3.0] * 4


def test_a_sample_state_input_of_other_dims_is_named(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    index = {m.name: m for m in stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=30).models}
    bad = index["warm_bad_acc"]
    assert bad.state == "UNAVAILABLE"
    assert "sample 'w': input 'acc' (state input of sequence_batching): dims [3] do not fit" in bad.reason
