"""An evicted lazy model keeps the weights an operator or a rollback set (Rollout.hold): a request
naming no version is judged before the load by the version those weights route it to, as once
loaded. It had been judged by every version: a request only the config's version takes loaded the
model, evicting another, and was then refused by the version the kept weights sent it to."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from protos import admin_pb2 as apb
from protos import admin_pb2_grpc as apb_grpc
from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from server.models.traffic import Slices
from tests.integration.test_lazy_judge_more import LAZY, TWO_WIDTHS, infer, not_loaded, width_model
from tests.support.answers import answer
from tests.support.server_process import ServerProcess

SPLIT = 'parameters { key: "traffic_weights" value { string_value: "1:50,2:50" } }\n'
PAD = 3 << 19  # 1.5 MiB in each version's directory: a model's files hold 3 MiB, the budget one model
FIRST_LOAD = "first request, loading it (lazy_load)"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("lazy_h20")
    # Version 1 takes [N, 4], version 2 [N, 8]; "operator" has no policy (its newest, 2, takes all).
    for name, policy in (("operator", ""), ("rollback", SPLIT), ("filler", "")):
        for version, width in (("1", 4), ("2", 8)):
            (repo / name / version).mkdir(parents=True)
            width_model(repo / name / version / "model.onnx", width)
            (repo / name / version / "pad.bin").write_bytes(b"\0" * PAD)
        (repo / name / "config.pbtxt").write_text(TWO_WIDTHS + policy + LAZY)
    with ServerProcess("--model-repository", str(repo), "--model-memory-budget-mb", "5") as running:
        yield running


def onnx(name: str, width: int) -> pb.ModelInferRequest:
    return infer(name, width=width, datatype="onnx")


def loading(name: str) -> pb.ModelInferRequest:
    """A request its config's routing sends to a version that takes it: it loads the model."""
    if name == "operator":
        return onnx(name, 8)
    request = onnx(name, 4)  # routed by its id: one that 1:50,2:50 sends to version 1
    request.id = next(f"r{i}" for i in range(100) if Slices.of({1: 50, 2: 50}).pick_key(f"r{i}") == 1)
    return request


def evict(stub: pb_grpc.GRPCInferenceServiceStub, server: ServerProcess, name: str) -> None:
    """Load the filler model: the budget holds one model, so `name` is evicted."""
    assert answer(stub, onnx("filler", 8)) == ("OK", "")
    assert not_loaded(server.address, name)


def loads_of(server: ServerProcess, name: str) -> int:
    return sum(f"model {name}: {FIRST_LOAD}" in line for line in server.output().splitlines())


@pytest.mark.parametrize("case", ["operator", "rollback"])
def test_an_evicted_models_kept_weights_judge_an_unnamed_request_without_loading(
    server: ServerProcess, case: str
) -> None:
    """ "operator": its config sends every request to version 2, an operator's weights 1:100;
    "rollback": its config splits 1:50,2:50, version 2 was rolled back (weight 0). Either way a
    request of width 8 (only version 2 takes it) is refused by version 1 once loaded."""
    name = case
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        admin = apb_grpc.AdminStub(channel)
        assert answer(stub, loading(name)) == ("OK", "")
        if case == "operator":
            admin.SetWeights(apb.SetWeightsRequest(model=name, weights={1: 100, 2: 0}), timeout=30)
        else:
            admin.Rollback(apb.RollbackRequest(model=name, version=2), timeout=30)
        assert not not_loaded(server.address, name)
        once_loaded = answer(stub, onnx(name, 8))  # refused by version 1 as loaded
        assert once_loaded[0] == "INVALID_ARGUMENT" and "Expected [-1,4]" in once_loaded[1], once_loaded
        evict(stub, server, name)
        loads = loads_of(server, name)
        judged = answer(stub, onnx(name, 8))
        refused_without_load = not_loaded(server.address, name) and loads_of(server, name) == loads
        assert refused_without_load, judged  # it had loaded the model (evicting the filler)
        assert judged == once_loaded
        # A request version 1 takes loads it, and version 1 (the kept weights') serves it.
        served = stub.ModelInfer(onnx(name, 4), timeout=60).model_version
        assert served == "1" and not not_loaded(server.address, name)
