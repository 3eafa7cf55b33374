"""A lazy model never loaded yet has signatures to judge a request by: from its config when it
declares every tensor (its model file not read), else from its graph (no session); none when its
load would fail. A changed model is judged by its files as they are now, and concurrent requests
share one read that began after they came."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from protos import grpc_service_pb2 as pb
from protos import model_config_pb2 as mc
from server.errors import InvalidRequest
from server.models.lazy_signatures import FreshRuns, predicted_signatures
from server.models.repository import load_model_source
from server.protocol.declared import check_declared_by_any
from server.protocol.validate import Signature
from tests.unit.test_lazy_loads import LAZY, FakeManager, loads_for

DECLARED = (
    'platform: "onnxruntime_onnx"\nmax_batch_size: 4\n'
    'input { name: "x" data_type: TYPE_FP32 dims: [3] }\n'
    'output { name: "y" data_type: TYPE_FP32 dims: [3] }\n' + LAZY
)


def graph_file(path: Path, first: int | str = "N") -> Path:
    """x FP32 [first, 3] -> y FP32 [first, 3] (a variable first dim batches)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "ident",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [first, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [first, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def lazy_model(repo: Path, name: str, config: str, graph: bool = True, first: int | str = "N") -> Path:
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    (repo / name / "config.pbtxt").write_text(config)
    model_file = repo / name / "1" / "model.onnx"
    if graph:
        graph_file(model_file, first)
    else:
        model_file.write_bytes(b"not an onnx model")
    return model_file


def request(name: str = "x", shape: tuple[int, ...] = (1, 3), datatype: str = "FP32") -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name=name, datatype=datatype, shape=list(shape))
    message.raw_input_contents.append(bytes(4 * math.prod(shape)))  # FP32 or INT32: judged decoded
    return message


def test_a_config_declaring_every_tensor_is_judged_without_reading_the_graph(tmp_path: Path) -> None:
    lazy_model(tmp_path, "m", DECLARED, graph=False)  # its file is not a graph: never read
    signatures = predicted_signatures(load_model_source(tmp_path, "m"), 64)
    assert signatures is not None and list(signatures) == [1]
    signature = signatures[1]
    assert signature.max_batch_size == 4
    assert list(signature.inputs) == ["x"] and list(signature.outputs) == ["y"]
    check_declared_by_any(signatures, request(shape=(4, 3)))  # valid: not refused
    for invalid, field in (
        (request(name="z"), "z"),
        (request(datatype="INT32"), "INT32"),
        (request(shape=(1, 4)), "x"),
        (request(shape=(5, 3)), "batch-size must be <= 4"),
    ):
        with pytest.raises(InvalidRequest, match=field):
            check_declared_by_any(signatures, invalid)


def test_a_config_leaving_tensors_to_the_graph_is_completed_from_it(tmp_path: Path) -> None:
    lazy_model(tmp_path, "m", LAZY)
    signatures = predicted_signatures(load_model_source(tmp_path, "m"), 16)
    assert signatures is not None
    signature = signatures[1]
    assert signature.max_batch_size == 16  # the default, as the load completes it
    assert signature.inputs["x"].dims == (3,) and signature.outputs["y"].dims == (3,)
    with pytest.raises(InvalidRequest, match="batch-size must be <= 16"):
        check_declared_by_any(signatures, request(shape=(17, 3)))


def test_a_model_its_load_would_refuse_has_no_signatures(tmp_path: Path) -> None:
    lazy_model(tmp_path, "unreadable", LAZY, graph=False)  # nothing to complete it from
    lazy_model(tmp_path, "unbatched", "max_batch_size: 4\n" + LAZY, first=2)  # no batch dim to batch on
    for name in ("unreadable", "unbatched"):
        assert predicted_signatures(load_model_source(tmp_path, name), 64) is None  # its load says why


async def test_a_never_loaded_model_has_signatures_and_a_changed_one_new_ones(tmp_path: Path) -> None:
    lazy_model(tmp_path, "m", DECLARED, graph=False)
    fake = FakeManager()
    loads = loads_for(tmp_path, fake, 0)
    loads.register_lazy("m")
    first = await loads.signatures("m")
    assert first is not None and first[1].max_batch_size == 4
    assert fake.loaded == []  # judged without loading it
    (tmp_path / "m" / "config.pbtxt").write_text(DECLARED.replace("max_batch_size: 4", "max_batch_size: 2"))
    changed = await loads.signatures("m")
    assert changed is not None and changed[1].max_batch_size == 2  # never the stale signature
    assert fake.loaded == []


async def test_concurrent_reads_share_one_run_that_began_after_them() -> None:
    gate, started = asyncio.Event(), asyncio.Event()
    runs: list[int] = []

    async def run(name: str) -> int:
        runs.append(len(runs) + 1)
        started.set()
        await gate.wait()
        return len(runs)

    fresh = FreshRuns(run)
    first = asyncio.create_task(fresh.get("m"))
    await started.wait()  # run 1 is under way: later callers must not take its answer
    later = [asyncio.create_task(fresh.get("m")) for _ in range(8)]
    gate.set()
    assert await first == 1
    assert await asyncio.gather(*later) == [2] * 8  # one run for the eight, begun after they came
    assert runs == [1, 2]


def test_sequence_parameters_are_judged_as_the_loaded_model_judges_them() -> None:
    """A plain model refuses a sequence id, a sequence model needs one, an ensemble (its kept
    signature, once evicted) takes it for its steps: never refused where its load would take it."""
    sequence_id = request()
    sequence_id.parameters["sequence_id"].int64_param = 5
    for platform, sequences, refused in (
        ("onnxruntime_onnx", False, (sequence_id, "has no sequence_batching")),
        ("onnxruntime_onnx", True, (request(), "correlation ID")),
        ("ensemble", False, None),
    ):
        config = mc.ModelConfig(name="m", platform=platform, max_batch_size=4)
        config.input.add(name="x", data_type=mc.TYPE_FP32, dims=[3])
        config.output.add(name="y", data_type=mc.TYPE_FP32, dims=[3])
        if sequences:
            config.sequence_batching.SetInParent()
        signatures = {1: Signature.from_config(config)}
        if refused is None:
            check_declared_by_any(signatures, sequence_id)
            continue
        with pytest.raises(InvalidRequest, match=refused[1]):
            check_declared_by_any(signatures, refused[0])
