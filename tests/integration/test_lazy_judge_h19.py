"""A lazy model never loaded answers as its loaded self, without loading where that answer is a
refusal: a request naming no version, to a model whose traffic weights split the traffic, is judged
by the version routing picks for it (its id's, or a random point's, kept so that version serves
it); a `traffic_sticky_key` parameter of the wrong type is refused as the loaded routing refuses it;
and an ensemble whose load would fail planning its steps answers with that load failure, not by its
own signature.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from server.models.traffic import Slices
from tests.integration.test_lazy_judge_more import LAZY, TWO_WIDTHS, identity, infer, not_loaded, width_model
from tests.support.answers import answer
from tests.support.server_process import ServerProcess

SPLIT = 'parameters { key: "traffic_weights" value { string_value: "1:50,2:50" } }\n'
STICKY = 'parameters { key: "traffic_sticky_key" value { string_value: "user" } }\n'
RANDOM_MODELS = [f"split_random_{i}" for i in range(4)]


def ensemble(step: str) -> str:
    return (
        'platform: "ensemble"\nmax_batch_size: 8\n'
        'input { name: "X" data_type: TYPE_FP32 dims: [4] }\n'
        'output { name: "Y" data_type: TYPE_FP32 dims: [4] }\n'
        f'ensemble_scheduling {{ step {{ model_name: "{step}" model_version: -1 '
        'input_map { key: "X" value: "X" } output_map { key: "Y" value: "Y" } } }\n'
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("lazy_h19")
    # Version 1 takes [N, 4], version 2 [N, 8].
    for name in ("split_keyed", "sticky", *RANDOM_MODELS):
        policy = STICKY if name == "sticky" else SPLIT
        write(repo, name, TWO_WIDTHS + policy + LAZY)
        width_model(repo / name / "1" / "model.onnx", 4)
        width_model(repo / name / "2" / "model.onnx", 8)
    write(repo, "half", identity("FP16") + LAZY)  # takes FP16: an FP32 ensemble's plan fails
    write(repo, "ens_broken", ensemble("half"))
    write(repo, "whole", identity() + LAZY)
    write(repo, "ens_whole", ensemble("whole"))
    with ServerProcess("--model-repository", str(repo)) as running:
        yield running


def write(repo: Path, name: str, config: str) -> None:
    for version in ("1", "2"):
        (repo / name / version).mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(config)


def onnx(name: str, width: int, rid: str = "", **parameters: pb.InferParameter) -> pb.ModelInferRequest:
    request = infer(name, width=width, datatype="onnx", parameters=parameters)
    request.id = rid
    return request


def failures(stub: pb_grpc.GRPCInferenceServiceStub, name: str) -> dict[str, int]:
    """Failures per version ({}: none counted while not loaded, "not available")."""
    try:
        stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name=name), timeout=30).model_stats
    except grpc.RpcError as refused:
        assert "is not available" in (refused.details() or ""), refused
        return {}
    return {s.version: s.inference_stats.fail.count for s in stats}


def test_an_unnamed_request_the_version_it_is_routed_to_refuses_is_refused_without_loading(
    server: ServerProcess,
) -> None:
    name, slices = "split_keyed", Slices.of({1: 50, 2: 50})
    to_2 = next(f"r{i}" for i in range(100) if slices.pick_key(f"r{i}") == 2)
    to_1 = next(f"r{i}" for i in range(100) if slices.pick_key(f"r{i}") == 1)
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        before = answer(stub, onnx(name, 4, to_2))  # version 1 takes it, version 2 is where it goes
        assert not_loaded(server.address, name), before  # refused without loading it
        assert failures(stub, name) == {"2": 1}  # counted in the version it was routed to
        assert answer(stub, onnx(name, 4, to_1)) == ("OK", "")  # loads it
        assert not not_loaded(server.address, name)
        after = answer(stub, onnx(name, 4, to_2))
        counted = failures(stub, name)
    assert after[0] == "INVALID_ARGUMENT" and "Expected [-1,8]" in after[1], after
    assert before == after
    assert counted == {"1": 0, "2": 2}


def test_the_version_an_unnamed_request_was_judged_by_is_the_one_that_serves_it(
    server: ServerProcess,
) -> None:
    """Without a routing key the policy picks at random: the point drawn to judge the request is
    the one it is routed by once loaded (a request judged by version 1 and run on 2 had loaded the
    model and then been refused)."""
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for name in RANDOM_MODELS:
            for _ in range(60):  # each picks version 1 at even odds: 2**-60 to pick 2 every time
                try:
                    served = stub.ModelInfer(onnx(name, 4), timeout=60).model_version
                    break
                except grpc.RpcError as refused:
                    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
                    assert not_loaded(server.address, name), "refused after the load it made"
            else:
                pytest.fail(f"{name}: no request was routed to version 1")
            assert served == "1"
            assert not not_loaded(server.address, name)


def test_a_sticky_key_of_the_wrong_type_is_refused_without_loading_as_once_loaded(
    server: ServerProcess,
) -> None:
    name = "sticky"  # no weights: every request goes to version 2, routed by the key "user"
    wrong = pb.InferParameter(bool_param=True)
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        before = [answer(stub, onnx(name, width, user=wrong)) for width in (4, 8)]
        assert not_loaded(server.address, name), before
        assert failures(stub, name) == {}  # refused by routing: no version counts it
        assert answer(stub, onnx(name, 8, user=pb.InferParameter(int64_param=3))) == ("OK", "")  # loads
        assert not not_loaded(server.address, name)
        after = [answer(stub, onnx(name, width, user=wrong)) for width in (4, 8)]
        counted = failures(stub, name)
    message = (
        "parameter 'user' (the model's traffic_sticky_key) must be a string or an integer, got bool_param"
    )
    assert after == [("INVALID_ARGUMENT", message)] * 2
    assert before == after
    assert counted == {"1": 0, "2": 0}  # nor once loaded


def test_an_ensemble_whose_load_would_fail_planning_its_steps_answers_that_failure(
    server: ServerProcess,
) -> None:
    wrong_type = infer("ens_broken", datatype="FP16")  # its own signature refuses it (FP32)
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        first = answer(stub, wrong_type)
        valid = answer(stub, infer("ens_broken"))
        # An ensemble whose steps fit is still judged by its signature, without loading.
        judged = answer(stub, infer("ens_whole", datatype="FP16"))
        assert not_loaded(server.address, "ens_whole") and not_loaded(server.address, "whole")
    failure = "step 1 (model 'half'): input 'X' is TYPE_FP16 but ensemble input 'X' is TYPE_FP32"
    assert first[0] == "UNAVAILABLE" and failure in first[1], first  # as a loaded attempt answers
    assert valid[0] == "UNAVAILABLE" and failure in valid[1], valid
    assert judged[0] == "INVALID_ARGUMENT" and "datatype FP16" in judged[1], judged
