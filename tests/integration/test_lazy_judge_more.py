"""A lazy model never loaded refuses, without loading, what its loaded self refuses before the
queue with the same status and message: a sequence request of 2 rows (the sequence batcher's
refusal), classification parameters the loaded model refuses, and a request naming no version that
its newest version refuses when no traffic policy could route it elsewhere (Triton's version_policy
sends it to the newest). Each had loaded the model first. Each case has a model of its own, so it is
sent before that model's load and after. And /metrics and ModelStatistics show a never-loaded model
that refused requests as they show a loaded one that refused the same requests (its zeros too).
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from onnx import TensorProto, helper, save

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.integration.test_repository_control import index
from tests.support.answers import answer
from tests.support.sequence_models import accumulator_config, accumulator_model
from tests.support.server_process import ServerProcess

LAZY = 'parameters { key: "lazy_load" value { string_value: "true" } }\n'


def identity(datatype: str = "FP32") -> str:
    return (
        'backend: "identity"\nmax_batch_size: 8\n'
        f'input {{ name: "X" data_type: TYPE_{datatype} dims: [4] }}\n'
        f'output {{ name: "Y" data_type: TYPE_{datatype} dims: [4] }}\n'
    )


# Two versions whose graphs differ (x: [N, 4] in version 1, [N, 8] in version 2), both served.
TWO_WIDTHS = 'platform: "onnxruntime_onnx"\nmax_batch_size: 8\nversion_policy { all { } }\n'


def width_model(path: Path, width: int) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "width",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save(model, path)


def infer(
    name: str,
    rows: int = 1,
    width: int = 4,
    datatype: str = "FP32",
    sequence: tuple[int, bool] | None = None,
    classification: pb.InferParameter | None = None,
    parameters: dict[str, pb.InferParameter] | None = None,
) -> pb.ModelInferRequest:
    """A request for model `name` of `rows` x `width` zeros: input "X" of an identity model, or
    "x" of an ONNX one (datatype "onnx", FP32)."""
    request = pb.ModelInferRequest(model_name=name)
    wire = "FP32" if datatype == "onnx" else datatype
    request.inputs.add(name="x" if datatype == "onnx" else "X", datatype=wire, shape=[rows, width])
    dtype = np.float16 if wire == "FP16" else np.float32
    request.raw_input_contents.append(np.zeros((rows, width), dtype).tobytes())
    if sequence is not None:
        request.parameters["sequence_id"].int64_param = sequence[0]
        request.parameters["sequence_start"].bool_param = sequence[1]
    if classification is not None:
        request.outputs.add(name="Y").parameters["classification"].CopyFrom(classification)
    for key, value in (parameters or {}).items():
        request.parameters[key].CopyFrom(value)
    return request


def text(value: str) -> pb.InferParameter:
    return pb.InferParameter(string_param=value)


def integer(value: int) -> pb.InferParameter:
    return pb.InferParameter(int64_param=value)


Build = Callable[[str], pb.ModelInferRequest]


@dataclass(frozen=True)
class Case:
    kind: str  # the model: "identity", "identity_fp16", "sequence" or "widths"
    invalid: Build
    valid: Build  # the request that loads it


def plain(name: str) -> pb.ModelInferRequest:
    return infer(name)


def fp16(name: str) -> pb.ModelInferRequest:
    return infer(name, datatype="FP16")


def sequence_start(name: str) -> pb.ModelInferRequest:
    return infer(name, datatype="onnx", sequence=(99, True))


def classified(count: pb.InferParameter, datatype: str = "FP32") -> Build:
    return lambda name: infer(name, datatype=datatype, classification=count)


def with_parameter(key: str, value: pb.InferParameter) -> Build:
    return lambda name: infer(name, parameters={key: value})


def two_rows(start: bool) -> Build:
    return lambda name: infer(name, 2, datatype="onnx", sequence=(1 if start else 2, start))


def width(columns: int) -> Build:
    return lambda name: infer(name, width=columns, datatype="onnx")


CASES = {
    # (a) the sequence batcher's refusal, after admission
    "sequence_two_rows_start": Case("sequence", two_rows(True), sequence_start),
    "sequence_two_rows_continued": Case("sequence", two_rows(False), sequence_start),
    # (c) classification parameters, after admission
    "class_count_text": Case("identity", classified(text("3")), plain),
    "class_count_zero": Case("identity", classified(integer(0)), plain),
    "class_count_negative": Case("identity", classified(integer(-2)), plain),
    "class_type_unsupported": Case("identity_fp16", classified(integer(1), "FP16"), fp16),
    # request parameters (judged early already: kept in the differential set)
    "timeout_text": Case("identity", with_parameter("timeout", text("soon")), plain),
    "timeout_negative": Case("identity", with_parameter("timeout", integer(-5)), plain),
    "priority_negative": Case("identity", with_parameter("priority", integer(-1)), plain),
    # (b) no traffic policy: a request naming no version goes to the newest, which refuses it
    "newest_refuses_older_takes": Case("widths", width(4), width(8)),
}


def write_case(repo: Path, name: str, kind: str) -> None:
    folder = repo / name
    (folder / "1").mkdir(parents=True)
    if kind == "sequence":
        accumulator_model(folder / "1" / "model.onnx")
        config = accumulator_config()
    elif kind == "widths":
        (folder / "2").mkdir()
        width_model(folder / "1" / "model.onnx", 4)
        width_model(folder / "2" / "model.onnx", 8)
        config = TWO_WIDTHS
    else:
        config = identity("FP16" if kind == "identity_fp16" else "FP32")
    (folder / "config.pbtxt").write_text(config + LAZY)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("lazy_more")
    for name, case in CASES.items():
        write_case(repo, name, case.kind)
    # The same identity model twice: lazy (never loaded) and loaded at start.
    for name, lazy in (("stats_lazy", LAZY), ("stats_loaded", "")):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(identity() + lazy)
    with ServerProcess("--model-repository", str(repo)) as running:
        yield running


def not_loaded(address: str, name: str) -> bool:
    return all("not loaded (lazy)" in reason for _, _, reason in index(address)[name])


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_model_never_loaded_refuses_as_once_loaded_without_loading(
    server: ServerProcess, name: str
) -> None:
    case = CASES[name]
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        before = answer(stub, case.invalid(name))
        assert not_loaded(server.address, name), before  # refused without loading it
        assert answer(stub, case.valid(name)) == ("OK", "")  # loads it
        assert not not_loaded(server.address, name)
        after = answer(stub, case.invalid(name))
    assert after[0] == "INVALID_ARGUMENT", after
    assert before == after


def scrape(server: ServerProcess, model: str) -> dict[str, float]:
    """`model`'s series on /metrics: name and labels (without the model) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=30) as page:
        lines = page.read().decode().splitlines()
    shown: dict[str, float] = {}
    for line in lines:
        found = re.match(r"^(\w+)\{(.*)\} (\S+)$", line)
        if found is None or f'model="{model}"' not in found.group(2):
            continue
        labels = ",".join(sorted(p for p in found.group(2).split(",") if not p.startswith("model=")))
        shown[f"{found.group(1)}{{{labels}}}"] = float(found.group(3))
    return shown


def statistics(stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> list[pb.ModelStatistics]:
    shown = list(stub.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=30).model_stats)
    for stats in shown:  # times and names differ; the counts and the fields shown must not
        stats.name, stats.last_inference = "", 0
        for duration in (stats.inference_stats.fail, stats.inference_stats.success):
            duration.ns = 0
    return shown


def test_a_never_loaded_model_shows_its_refusals_as_a_loaded_one_does(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for model in ("stats_lazy", "stats_loaded"):
            for width in (5, 6):
                assert answer(stub, infer(model, width=width))[0] == "INVALID_ARGUMENT"
        assert not_loaded(server.address, "stats_lazy")
        assert statistics(stub, "stats_lazy") == statistics(stub, "stats_loaded")
    loaded = scrape(server, "stats_loaded")
    # Its instances and its memory footprint are what a model not loaded does not have.
    resident = ("sluiceway_model_instances", "sluiceway_model_footprint_bytes")
    loaded = {k: v for k, v in loaded.items() if not k.startswith(resident)}
    assert loaded['nv_inference_request_failure{reason="OTHER",version="1"}'] == 2
    assert scrape(server, "stats_lazy") == loaded
    assert not_loaded(server.address, "stats_lazy")
