"""A request naming no version of a lazy model not loaded is judged by the version its load would
route it to: the newest when the config has no traffic policy and no weights wait for the load
(it had been refused only when every version refused it, so one the newest refuses and an older
takes loaded the model, then was refused); any version otherwise. Classification parameters and a
sequence request's single row are judged too (they had been left to the load)."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from batcher.sequence_types import SequenceError
from protos import grpc_service_pb2 as pb
from protos import model_config_pb2 as mc
from server.errors import InvalidRequest
from server.models.rollout import Rollout
from server.protocol.declared import check_declared, check_declared_by_any
from server.protocol.validate import Signature
from tests.unit.test_declared_from_config import lazy_model
from tests.unit.test_lazy_loads import LAZY, FakeManager, loads_for


def signature(width: int, sequences: bool = False) -> Signature:
    config = mc.ModelConfig(name="m", max_batch_size=4)
    config.input.add(name="x", data_type=mc.TYPE_FP32, dims=[width])
    config.output.add(name="y", data_type=mc.TYPE_FP32, dims=[width])
    if sequences:
        config.sequence_batching.SetInParent()
    return Signature.from_config(config)


def request(rows: int = 1, width: int = 3) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="x", datatype="FP32", shape=[rows, width])
    message.raw_input_contents.append(bytes(4 * math.prod((rows, width))))
    return message


def test_an_unnamed_request_is_judged_by_the_newest_version_only_when_routing_goes_there() -> None:
    versions = {1: signature(3), 2: signature(4)}  # version 1 takes width 3, the newest does not
    with pytest.raises(InvalidRequest, match="'x'"):
        check_declared_by_any(versions, request(), unnamed_to=2)
    check_declared_by_any(versions, request())  # a policy may route it to version 1: not refused
    named = request()
    named.model_version = "1"
    check_declared_by_any(versions, named, unnamed_to=2)  # it names one that takes it


def test_classification_and_a_sequence_row_are_judged() -> None:
    classified = request()
    classified.outputs.add(name="y").parameters["classification"].int64_param = 0
    with pytest.raises(InvalidRequest, match="must be positive, got 0"):
        check_declared(signature(3), classified)
    two_rows = request(rows=2)
    two_rows.parameters["sequence_id"].int64_param = 7
    with pytest.raises(SequenceError, match=r"batch-size 1 .*\(sequence 7: got 2 rows\)"):
        check_declared(signature(3, sequences=True), two_rows)
    # Versions whose sequence rows differ: the refusal of one is not the answer of all.
    check_declared_by_any({1: signature(3), 2: signature(3, sequences=True)}, request())


TWO_VERSIONS = (
    'platform: "onnxruntime_onnx"\nmax_batch_size: 4\nversion_policy { all { } }\n'
    'input { name: "x" data_type: TYPE_FP32 dims: [3] }\n'
    'output { name: "y" data_type: TYPE_FP32 dims: [3] }\n' + LAZY
)
WEIGHTS = 'parameters { key: "traffic_weights" value { string_value: "1:50,2:50" } }\n'


async def test_a_model_routes_unnamed_requests_to_the_newest_without_a_policy_or_kept_weights(
    tmp_path: Path,
) -> None:
    for name, config in (("plain", TWO_VERSIONS), ("weighted", TWO_VERSIONS + WEIGHTS)):
        lazy_model(tmp_path, name, config, graph=False)
        (tmp_path / name / "2").mkdir()
        (tmp_path / name / "2" / "model.onnx").write_bytes(b"never read")
    fake = FakeManager()
    rollout = Rollout()
    fake.rollout = rollout  # type: ignore[attr-defined]
    loads = loads_for(tmp_path, fake, 0)
    for name in ("plain", "weighted"):
        loads.register_lazy(name)
        assert loads.unnamed_version(name) is None  # nothing read yet: not known
        assert await loads.signatures(name) is not None
    assert loads.unnamed_version("plain") == 2
    assert loads.unnamed_version("weighted") is None  # a policy may route it to either
    # --workers: by the weights its generation's shared log sets, read with its config (h20)
    rollout.shared = SimpleNamespace(logged_weights=lambda *_: {1: 100})  # type: ignore[assignment]
    assert await loads.signatures("plain") is not None
    assert loads.unnamed_version("plain") == 1
    assert fake.loaded == []
