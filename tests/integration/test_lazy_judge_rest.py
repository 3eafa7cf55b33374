"""A lazy model never loaded answers as its loaded self, without loading: a sequence request that is
not a start, for an id never started, is refused with the loaded sequence batcher's status and
message (it had loaded the model to hear it), while a start and its continuation sent together on a
stream still wait for the load and both run. And a never-loaded model's /metrics series carry its
config's `metric_tags` labels and its response-cache series, as the loaded model's do (they were
other series, without the labels). A request naming no version, to a model whose traffic policy
gives one version all the traffic, is judged by that version (it had been refused early only when
every version refused it: one the routed version refuses and another takes loaded the model).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc as pb_grpc
from tests.integration.test_lazy_judge_more import (
    LAZY,
    TWO_WIDTHS,
    identity,
    infer,
    not_loaded,
    scrape,
    statistics,
    width_model,
)
from tests.support.answers import answer
from tests.support.sequence_models import accumulator_config, accumulator_model
from tests.support.server_process import ServerProcess

TAGS = 'metric_tags { key: "team" value: "vision" }\nresponse_cache { enable: true }\n'
# Version 1 takes [N, 4], version 2 [N, 8]; every request naming no version goes to version 1.
OLDEST_ONLY = 'parameters { key: "traffic_weights" value { string_value: "1:100,2:0" } }\n'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("lazy_rest")
    for name in ("seq_unary", "seq_stream"):
        write(repo, name, accumulator_config() + LAZY, sequence=True)
    # The same tagged, cached identity model twice: lazy (never loaded) and loaded at start.
    write(repo, "tags_lazy", identity() + TAGS + LAZY)
    write(repo, "tags_loaded", identity() + TAGS)
    (repo / "oldest_only" / "2").mkdir(parents=True)
    write(repo, "oldest_only", TWO_WIDTHS + OLDEST_ONLY + LAZY)
    width_model(repo / "oldest_only" / "1" / "model.onnx", 4)
    width_model(repo / "oldest_only" / "2" / "model.onnx", 8)
    with ServerProcess("--model-repository", str(repo), "--response-cache-bytes", "1000000") as running:
        yield running


def write(repo: Path, name: str, config: str, sequence: bool = False) -> None:
    (repo / name / "1").mkdir(parents=True)
    if sequence:
        accumulator_model(repo / name / "1" / "model.onnx")
    (repo / name / "config.pbtxt").write_text(config)


def step(name: str, sid: int, start: bool, value: float = 1.0) -> pb.ModelInferRequest:
    request = infer(name, datatype="onnx", sequence=(sid, start))
    request.raw_input_contents[0] = np.full((1, 4), value, np.float32).tobytes()
    return request


def test_a_continuation_of_a_sequence_never_started_is_refused_as_once_loaded_without_loading(
    server: ServerProcess,
) -> None:
    name = "seq_unary"
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        before = answer(stub, step(name, 7, start=False))
        assert not_loaded(server.address, name), before  # refused without loading it
        assert answer(stub, step(name, 99, start=True)) == ("OK", "")  # loads it
        assert not not_loaded(server.address, name)
        after = answer(stub, step(name, 7, start=False))
    assert after[0] == "INVALID_ARGUMENT" and "must specify the START flag" in after[1], after
    assert before == after


def test_a_start_and_its_continuation_sent_together_both_wait_for_the_load(server: ServerProcess) -> None:
    name = "seq_stream"
    frames = [step(name, 5, start=True, value=1.0), step(name, 5, start=False, value=2.0)]
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        answers = list(stub.ModelStreamInfer(iter(frames), timeout=60))
    assert [a.error_message for a in answers] == ["", ""]
    sums = [np.frombuffer(a.infer_response.raw_output_contents[0], np.float32)[0] for a in answers]
    assert sorted(sums) == [1.0, 3.0]  # the continuation ran after its start, on its state


def test_a_never_loaded_models_series_carry_its_metric_tags_and_cache_series(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for model in ("tags_lazy", "tags_loaded"):
            for width in (5, 6):
                assert answer(stub, infer(model, width=width))[0] == "INVALID_ARGUMENT"
    assert not_loaded(server.address, "tags_lazy")
    # Its instances and its memory footprint are what a model not loaded does not have.
    resident = ("sluiceway_model_instances", "sluiceway_model_footprint_bytes")
    loaded = {k: v for k, v in scrape(server, "tags_loaded").items() if not k.startswith(resident)}
    assert loaded['nv_inference_request_failure{_team="vision",reason="OTHER",version="1"}'] == 2
    assert loaded['nv_cache_num_misses_per_model{_team="vision",version="1"}'] == 0
    assert scrape(server, "tags_lazy") == loaded
    assert not_loaded(server.address, "tags_lazy")


def test_an_unnamed_request_is_judged_by_the_one_version_its_traffic_policy_routes_to(
    server: ServerProcess,
) -> None:
    name = "oldest_only"
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        before = answer(stub, infer(name, width=8, datatype="onnx"))  # version 2 would take it
        assert not_loaded(server.address, name), before  # refused without loading it
        counted = {s.version: s.inference_stats.fail.count for s in statistics(stub, name)}
        assert counted == {"1": 1}  # in the version routing sends it to, as once loaded
        assert answer(stub, infer(name, width=4, datatype="onnx")) == ("OK", "")  # loads it
        assert not not_loaded(server.address, name)
        after = answer(stub, infer(name, width=8, datatype="onnx"))
        counted = {s.version: s.inference_stats.fail.count for s in statistics(stub, name)}
    assert after[0] == "INVALID_ARGUMENT", after
    assert before == after
    assert counted == {"1": 2, "2": 0}
