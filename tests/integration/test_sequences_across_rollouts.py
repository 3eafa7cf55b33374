"""Live sequences across a rollout (server/models/sequence_routing.py): a sequence's continuation
goes to the version its start went to, whatever the weights say now. A ramp from 1:50,2:50 to
1:90,2:10 with traffic_sticky_key sequence_id moved 39 of 48 live sequences of version 2 to
version 1, where they were refused "it was never started"."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from protos import admin_pb2 as apb
from protos import admin_pb2_grpc as apb_grpc
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.support import sequence_models as sm
from tests.support.repositories import write_model
from tests.support.server_process import ServerProcess

SIDS = range(1, 11)  # ten sequences: both versions get some (rendezvous hashing is deterministic)


def split_config(**params: str) -> str:
    return (
        sm.accumulator_config()
        + "version_policy { all { } }\n"
        + "".join(
            f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n' for k, v in params.items()
        )
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("rollout_seq_repo")
    acc = sm.accumulator_model(tmp_path_factory.mktemp("rollout_seq_models") / "acc.onnx")
    sticky = split_config(traffic_weights="1:50,2:50", traffic_sticky_key="sequence_id")
    write_model(repo, "sticky", acc, sticky, versions=(1, 2))
    write_model(repo, "by_id", acc, split_config(traffic_weights="1:50,2:50"), versions=(1, 2))
    with ServerProcess("--model-repository", str(repo)) as running:
        yield running


@pytest.fixture()
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address) as opened:
        yield opened


def request(model: str, sid: int, value: float, rid: str = "", **flags: bool) -> pb.ModelInferRequest:
    x = np.full((1, 4), value, np.float32)
    req = pb.ModelInferRequest(model_name=model, id=rid)
    req.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    req.raw_input_contents.append(x.tobytes())
    req.parameters["sequence_id"].int64_param = sid
    for name, on in flags.items():
        req.parameters[f"sequence_{name}"].bool_param = on
    return req


def answer(response: pb.ModelInferResponse) -> tuple[str, float]:
    """(the version that computed it, the running sum)."""
    return response.model_version, float(np.frombuffer(response.raw_output_contents[0], np.float32)[0])


def step(
    stub: pb_grpc.GRPCInferenceServiceStub, model: str, sid: int, value: float, **flags: bool
) -> tuple[str, float]:
    return answer(stub.ModelInfer(request(model, sid, value, rid=f"{sid}-{value}", **flags), timeout=30))


def test_a_weight_change_and_a_rollback_leave_live_sequences_on_their_versions(channel: grpc.Channel) -> None:
    stub, admin = pb_grpc.GRPCInferenceServiceStub(channel), apb_grpc.AdminStub(channel)
    started = {sid: step(stub, "sticky", sid, 1.0, start=True)[0] for sid in SIDS}
    assert set(started.values()) == {"1", "2"}, started
    admin.SetWeights(apb.SetWeightsRequest(model="sticky", weights={1: 90, 2: 10}), timeout=30)
    assert {sid: step(stub, "sticky", sid, 2.0) for sid in SIDS} == {s: (v, 3.0) for s, v in started.items()}
    admin.Rollback(apb.RollbackRequest(model="sticky", version=2, reason="test"), timeout=30)
    ended = {sid: step(stub, "sticky", sid, 3.0, end=True) for sid in SIDS}
    assert ended == {s: (v, 6.0) for s, v in started.items()}  # version 2 still serves its own
    # A new start goes by the weights now: version 2 takes none.
    assert {step(stub, "sticky", sid, 1.0, start=True, end=True)[0] for sid in SIDS} == {"1"}


def test_without_a_sticky_key_a_sequence_follows_its_start(channel: grpc.Channel) -> None:
    # Each request is routed by its own id: continuations went to either version.
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    versions: Counter[str] = Counter()
    for sid in SIDS:
        version, _ = step(stub, "by_id", sid, 1.0, start=True)
        versions[version] += 1
        assert [step(stub, "by_id", sid, v, end=v == 4.0) for v in (2.0, 3.0, 4.0)] == [
            (version, 3.0),
            (version, 6.0),
            (version, 10.0),
        ]
    assert set(versions) == {"1", "2"}, versions


def test_a_streams_pipelined_sequence_follows_its_start(channel: grpc.Channel) -> None:
    # Its requests are routed as they are read, before the start has run.
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    sent = [
        request("by_id", 100 + sid, 1.0, rid=f"{sid}-{k}", start=k == 0, end=k == 4)
        for sid in SIDS
        for k in range(5)
    ]
    answers = list(stub.ModelStreamInfer(iter(sent), timeout=60))
    assert [a.error_message for a in answers] == [""] * len(sent)
    by_sequence: dict[str, set[str]] = {}
    for a in answers:
        by_sequence.setdefault(a.infer_response.id.split("-")[0], set()).add(a.infer_response.model_version)
    assert all(len(v) == 1 for v in by_sequence.values()), by_sequence
    assert {v for vs in by_sequence.values() for v in vs} == {"1", "2"}
    sums = sorted(answer(a.infer_response)[1] for a in answers)
    assert sums == sorted([float(k) for k in range(1, 6)] * len(SIDS))
