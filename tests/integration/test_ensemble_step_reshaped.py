"""An ensemble's step model reloaded (explicit mode, a RepositoryModelLoad `config` override) so
that it no longer fits the step, against a real server (README "Ensembles").

A step picks up its model's reload without the ensemble's (the version serving it when the step
runs). A step input or output renamed had answered every ensemble request, unary and stream,
INTERNAL (a KeyError in the scheduler); a step's max_batch_size narrowed below the ensemble's had
answered a request the ensemble's own config allows INVALID_ARGUMENT, the client's mistake, as had
a step reloaded with another datatype or other dims. All are UNAVAILABLE now, naming the ensemble,
the step and what no longer fits; loading the step back with its own config serves the ensemble
again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from clients import NO_RETRY, Client
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support.server_process import ServerProcess


def _identity(
    name: str,
    max_batch_size: int = 4,
    input_name: str = "x",
    output_name: str = "y",
    dtype: str = "TYPE_FP32",
    dims: int = 1,
) -> str:
    """An identity step's config as JSON (RepositoryModelLoad's `config`)."""
    return json.dumps(
        {
            "name": name,
            "backend": "identity",
            "max_batch_size": max_batch_size,
            "input": [{"name": input_name, "data_type": dtype, "dims": [dims]}],
            "output": [{"name": output_name, "data_type": dtype, "dims": [dims]}],
            "dynamic_batching": {},
        }
    )


def _step_pbtxt(name: str) -> str:
    return (
        f'name: "{name}"\nbackend: "identity"\nmax_batch_size: 4\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
        "dynamic_batching { }\n"
    )


ENS = """name: "ens"
platform: "ensemble"
max_batch_size: 4
input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]
ensemble_scheduling { step [
  { model_name: "slow" model_version: -1
    input_map { key: "x" value: "x" } output_map { key: "y" value: "mid" } },
  { model_name: "fast" model_version: -1
    input_map { key: "x" value: "mid" } output_map { key: "y" value: "y" } }
] }
"""


# Its dims are looser than its step's: a request's shape can miss the step's, the client's mistake.
LOOSE = """name: "loose"
platform: "ensemble"
max_batch_size: 4
input [ { name: "x" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ -1 ] } ]
ensemble_scheduling { step [
  { model_name: "fast" model_version: -1
    input_map { key: "x" value: "x" } output_map { key: "y" value: "y" } }
] }
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo: Path = tmp_path_factory.mktemp("reshaped-repo")
    models = (("slow", _step_pbtxt("slow")), ("fast", _step_pbtxt("fast")), ("ens", ENS), ("loose", LOOSE))
    for name, text in models:
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(text)
    args = ("--model-repository", str(repo), "--model-control-mode", "explicit", "--load-model", "ens",
            "--load-model", "loose")  # fmt: skip
    with ServerProcess(*args) as process:
        yield process


@pytest.fixture()
def client(server: ServerProcess) -> Iterator[Client]:
    """A client; the step models loaded back from the repository after each test."""
    with Client(server.address, retry=NO_RETRY) as c:
        yield c
        c.load_model("slow")
        c.load_model("fast")


@pytest.fixture()
def stub(server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def _request(rows: int = 1) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="ens", id="r")
    request.inputs.add(name="x", datatype="FP32", shape=[rows, 1])
    request.raw_input_contents.append(_x(rows).tobytes())
    return request


def _x(rows: int) -> np.ndarray:
    return np.arange(rows, dtype=np.float32).reshape(rows, 1)


def _serves(stub: pb_grpc.GRPCInferenceServiceStub, rows: int) -> None:
    answer = stub.ModelInfer(_request(rows), timeout=30)
    [out] = answer.raw_output_contents
    np.testing.assert_array_equal(np.frombuffer(out, np.float32).reshape(rows, 1), _x(rows))


def _refused(stub: pb_grpc.GRPCInferenceServiceStub, rows: int = 1) -> str:
    """The ensemble request's UNAVAILABLE details, unary; a stream's frame says the same."""
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(_request(rows), timeout=30)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
    details = str(info.value.details())
    [frame] = list(stub.ModelStreamInfer(iter([_request(rows)]), timeout=30))
    assert frame.error_message == f"UNAVAILABLE: {details}"
    return details


@pytest.mark.parametrize(
    ("config", "missing"),
    [
        (_identity("fast", input_name="z"), "it has no input 'x' (its inputs: ['z'])"),
        (_identity("fast", output_name="w"), "it has no output 'y' (its outputs: ['w'])"),
        (
            _identity("fast", dtype="TYPE_INT32"),
            "its input 'x' takes INT32, and the step gives it 'mid' as FP32",
        ),
        (_identity("fast", dims=2), "its input 'x' takes dims [2], not [1] as when the ensemble loaded"),
    ],
    ids=["input-renamed", "output-renamed", "datatype-changed", "dims-changed"],
)
def test_a_step_reloaded_with_a_renamed_or_retyped_tensor_answers_unavailable_naming_it(
    client: Client, stub: pb_grpc.GRPCInferenceServiceStub, config: str, missing: str
) -> None:
    _serves(stub, 2)
    client.load_model("fast", config=config)  # accepted: the step model on its own is fine
    details = _refused(stub)
    assert details.startswith("in ensemble 'ens', model 'fast' (version 1, serving it now) no longer fits")
    assert missing in details, details
    assert details.endswith("; step 2 (model 'fast')"), details
    assert client.model_ready("ens")  # the ensemble stays loaded: loading the step back fixes it
    client.load_model("fast")
    _serves(stub, 2)


def test_a_step_reloaded_with_a_smaller_max_batch_size_refuses_only_what_it_cannot_take(
    client: Client, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    _serves(stub, 4)
    client.load_model("slow", config=_identity("slow", max_batch_size=2))
    _serves(stub, 2)  # within both limits: served
    for rows in (3, 4):  # valid by the ensemble's own max_batch_size 4: not the client's mistake
        details = _refused(stub, rows)
        assert details.startswith(
            "in ensemble 'ens', model 'slow' (version 1, serving it now) no longer fits"
        )
        assert f"its max_batch_size 2 is below the ensemble's 4, and the request has {rows} rows" in details
        assert details.endswith("; step 1 (model 'slow')"), details
    with pytest.raises(grpc.RpcError) as info:  # past the ensemble's own limit: still the client's
        stub.ModelInfer(_request(5), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    client.load_model("slow")
    _serves(stub, 4)


def test_a_shape_the_step_never_took_is_still_the_clients_mistake(
    client: Client, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    # The ensemble's dims [-1] take [3]; its step's [1], unchanged since the ensemble loaded, do not.
    request = pb.ModelInferRequest(model_name="loose", id="r")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 3])
    request.raw_input_contents.append(np.zeros(3, np.float32).tobytes())
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert "unexpected shape for input 'x' for model 'fast'" in str(info.value.details())
    client.load_model(
        "fast", config=_identity("fast", dims=2)
    )  # fits neither [1] nor [2]: still the client's
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    request.inputs[0].shape[:] = [1, 1]  # fitted the dims loaded against: the reload's
    request.raw_input_contents[:] = [np.zeros(1, np.float32).tobytes()]
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
