"""A lazy ensemble never loaded refuses, without loading it or its steps, what its loaded self
refuses at its own level before any step runs, with the same status and message: input names,
data types, shapes, rows, outputs, parameters, classification, a version it does not serve. Each
had loaded the ensemble and its step models (evicting others under a memory budget), then been
refused. Each case has an ensemble and a step model of its own, so it is sent before their load and
after. A sequence's continuation sent to a never-loaded ensemble is left to its steps: its sequence
step may hold the sequence live (a plain lazy model not loaded holds none, and refuses it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.integration.test_repository_control import index
from tests.support.answers import answer
from tests.support.repositories import write_model
from tests.support.sequence_models import accumulator_config, accumulator_model
from tests.support.server_process import ServerProcess

LAZY = 'parameters { key: "lazy_load" value { string_value: "true" } }\n'
STEP = (  # a lazy identity step model: y is x
    'backend: "identity"\nmax_batch_size: 8\n'
    'input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
    'output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
)


def ensemble(step: str, extra: str = "") -> str:
    return (
        'platform: "ensemble"\nmax_batch_size: 8\n'
        'input [ { name: "IN" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        'output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        f'ensemble_scheduling {{ step [ {{ model_name: "{step}" model_version: -1 '
        'input_map { key: "x" value: "IN" } output_map { key: "y" value: "OUT" } } ] }\n' + extra
    )


def infer(
    name: str,
    rows: int = 1,
    width: int = 4,
    datatype: str = "FP32",
    input_name: str = "IN",
    output: str = "",
    classification: int | None = None,
    parameters: dict[str, pb.InferParameter] | None = None,
    version: str = "",
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=name, model_version=version)
    request.inputs.add(name=input_name, datatype=datatype, shape=[rows, width])
    dtype = np.float16 if datatype == "FP16" else np.float32
    request.raw_input_contents.append(np.ones((rows, width), dtype).tobytes())
    if output or classification is not None:
        asked = request.outputs.add(name=output or "OUT")
        if classification is not None:
            asked.parameters["classification"].int64_param = classification
    for key, value in (parameters or {}).items():
        request.parameters[key].CopyFrom(value)
    return request


Build = Callable[[str], pb.ModelInferRequest]
SOON = pb.InferParameter(string_param="soon")  # not a number of microseconds

# case (its ensemble's name) -> (the invalid request, the status its loaded ensemble answers)
CASES: dict[str, tuple[Build, str]] = {
    "input_name": (lambda n: infer(n, input_name="NOPE"), "INVALID_ARGUMENT"),
    "width": (lambda n: infer(n, width=5), "INVALID_ARGUMENT"),
    "datatype": (lambda n: infer(n, datatype="FP16"), "INVALID_ARGUMENT"),
    "rows": (lambda n: infer(n, rows=9), "INVALID_ARGUMENT"),
    "output": (lambda n: infer(n, output="NOPE"), "INVALID_ARGUMENT"),
    "timeout_text": (lambda n: infer(n, parameters={"timeout": SOON}), "INVALID_ARGUMENT"),
    "class_count_zero": (lambda n: infer(n, classification=0), "INVALID_ARGUMENT"),
    "version": (lambda n: infer(n, version="2"), "NOT_FOUND"),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("lazy_ensemble_judge")
    for name in [*CASES, "counted"]:
        for folder, config in ((f"{name}_step", STEP + LAZY), (name, ensemble(f"{name}_step"))):
            (repo / folder / "1").mkdir(parents=True)  # neither needs a model file
            (repo / folder / "config.pbtxt").write_text(config)
    # A sequence model loaded at start, and an ensemble over it that is lazy by its own parameter.
    files = tmp_path_factory.mktemp("lazy_ensemble_files")
    write_model(repo, "acc", accumulator_model(files / "acc.onnx"), accumulator_config())
    (repo / "acc_ens" / "1").mkdir(parents=True)
    over_acc = ensemble("acc").replace('key: "y"', 'key: "out"')  # its output is "out"
    (repo / "acc_ens" / "config.pbtxt").write_text(over_acc + LAZY)
    with ServerProcess("--model-repository", str(repo)) as running:
        yield running


def not_loaded(address: str, *names: str) -> bool:
    shown = index(address)
    return all("not loaded (lazy)" in reason for name in names for _, _, reason in shown[name])


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_never_loaded_ensemble_refuses_as_once_loaded_without_loading(
    server: ServerProcess, name: str
) -> None:
    invalid, status = CASES[name]
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        before = answer(stub, invalid(name))
        assert not_loaded(server.address, name, f"{name}_step"), before  # neither was loaded
        assert answer(stub, infer(name)) == ("OK", "")  # loads its step, then it
        assert not not_loaded(server.address, name, f"{name}_step")
        after = answer(stub, invalid(name))
    assert after[0] == status, after
    assert before == after


def test_a_refusal_before_the_load_is_counted_once_in_the_loaded_ensemble(server: ServerProcess) -> None:
    """Counted in the ensemble's version (as the loaded one counts it), and handed to the version its
    step's load brought up: not listed a second time beside it."""
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert answer(stub, infer("counted", width=5))[0] == "INVALID_ARGUMENT"
        assert not_loaded(server.address, "counted")
        assert answer(stub, infer("counted")) == ("OK", "")
        stats = stub.ModelStatistics(pb.ModelStatisticsRequest(), timeout=30)
    shown = [s for s in stats.model_stats if s.name == "counted"]
    assert len(shown) == 1, shown
    assert (shown[0].inference_stats.fail.count, shown[0].inference_stats.success.count) == (1, 1)


def test_a_sequence_continued_through_a_never_loaded_ensemble_reaches_its_live_step(
    server: ServerProcess,
) -> None:
    """The ensemble's sequence step (loaded) holds the sequence: its continuation is not refused
    "never started" before the ensemble's load, as a plain lazy model's would be."""
    sequence = {"sequence_id": pb.InferParameter(int64_param=41)}
    start = {**sequence, "sequence_start": pb.InferParameter(bool_param=True)}
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert answer(stub, infer("acc", input_name="x", parameters=start)) == ("OK", "")
        assert not_loaded(server.address, "acc_ens")
        response = stub.ModelInfer(infer("acc_ens", parameters=sequence), timeout=60)
    total = np.frombuffer(response.raw_output_contents[0], np.float32)
    assert total.tolist() == [2.0] * 4  # the step's sequence went on: 1 + 1
