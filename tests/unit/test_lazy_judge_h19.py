"""A lazy model not loaded, judged as once loaded: a request naming no version is routed before the
load by the rule the loaded traffic policy uses (its routing key, else a random point kept for the
routing after the load), a sticky key parameter of the wrong type is refused by that routing, and
an ensemble whose load would fail planning its steps is found from configs alone
(server/models/lazy_signatures.py, lazy_plans.py, rollout.py)."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
from google.protobuf import text_format

from batcher.stats import ModelStats
from protos import grpc_service_pb2 as pb
from protos import model_config_pb2 as mc
from server.errors import InvalidRequest
from server.models.lazy_plans import StepModels, plan_refusal
from server.models.lazy_signatures import UnnamedRouting, completed_config, unnamed_routing
from server.models.repository import ModelSource
from server.models.rollout import Rollout
from server.models.versions import READY, ModelEntry, ModelVersion


def source(versions: list[int], **parameters: str) -> ModelSource:
    config = mc.ModelConfig(name="m")
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return ModelSource("m", Path("m"), config, {v: Path(f"m/{v}") for v in versions}, "m/config.pbtxt")


def loaded(config: mc.ModelConfig) -> ModelEntry:
    versions = {
        v: cast(
            ModelVersion,
            SimpleNamespace(name="m", version=v, config=config, stats=ModelStats(), fingerprint=(v,)),
        )
        for v in (1, 2)
    }
    return ModelEntry("m", versions=versions, state=READY, order=[2, 1])


def request(rid: str = "", **parameters: pb.InferParameter) -> pb.ModelInferRequest:
    made = pb.ModelInferRequest(model_name="m", id=rid)
    for key, value in parameters.items():
        made.parameters[key].CopyFrom(value)
    return made


def routing(**parameters: str) -> UnnamedRouting:
    found = unnamed_routing(source([1, 2], **parameters))
    assert found is not None
    return found


def test_the_version_picked_before_the_load_is_the_one_the_loaded_policy_routes_to() -> None:
    params = {"traffic_weights": "1:50,2:50", "traffic_sticky_key": "user"}
    early = routing(**params)
    rollout, entry = Rollout(), loaded(source([1, 2], **params).config)
    draws = random.Random(7)
    picked = set()
    for i in range(200):
        keyed = request(user=pb.InferParameter(string_param=f"u{i}")) if i % 2 else request()
        version, point = early.pick(keyed, draws.random)
        assert rollout.route(entry, keyed, point) == version  # routed by the point drawn early
        picked.add(version)
    assert picked == {1, 2}  # the policy splits: both versions are picked


def test_without_a_policy_or_with_one_version_weighted_the_pick_is_that_version() -> None:
    assert routing().pick(request(), random.random)[0] == 2
    assert routing().only == 2
    one = routing(traffic_weights="1:100,2:0")
    assert one.only == 1 and one.pick(request("x"), random.random)[0] == 1
    assert routing(traffic_weights="1:50,2:50").only is None


@pytest.mark.parametrize("weights", ["1:50,2:50", "1:100,2:0", ""])
def test_a_sticky_key_of_the_wrong_type_is_refused_by_the_early_pick_as_by_the_loaded_routing(
    weights: str,
) -> None:
    params = {"traffic_sticky_key": "user", **({"traffic_weights": weights} if weights else {})}
    wrong = request(user=pb.InferParameter(bool_param=True))
    with pytest.raises(InvalidRequest) as early:
        routing(**params).pick(wrong, random.random)
    with pytest.raises(InvalidRequest) as once_loaded:
        Rollout().route(loaded(source([1, 2], **params).config), wrong)
    assert str(early.value) == str(once_loaded.value)
    assert "parameter 'user' (the model's traffic_sticky_key) must be a string or an integer" in str(
        early.value
    )


STEP = (
    'backend: "identity"\nmax_batch_size: 8\n'
    'input {{ name: "X" data_type: TYPE_{0} dims: [4] }}\n'
    'output {{ name: "Y" data_type: TYPE_{0} dims: [4] }}\n'
)
ENSEMBLE = (
    'name: "ens"\nplatform: "ensemble"\nmax_batch_size: 8\n'
    'input { name: "X" data_type: TYPE_FP32 dims: [4] }\n'
    'output { name: "Y" data_type: TYPE_FP32 dims: [4] }\n'
    'ensemble_scheduling { step { model_name: "step" model_version: -1 '
    'input_map { key: "X" value: "X" } output_map { key: "Y" value: "Y" } } }\n'
)


def repository(tmp_path: Path, step_type: str) -> ModelSource:
    (tmp_path / "step" / "1").mkdir(parents=True)
    (tmp_path / "step" / "config.pbtxt").write_text(STEP.format(step_type))
    config = text_format.Parse(ENSEMBLE, mc.ModelConfig())
    return ModelSource("ens", tmp_path / "ens", config, {1: tmp_path / "ens" / "1"}, "ens/config.pbtxt")


def complete(step: ModelSource, number: int) -> mc.ModelConfig:
    return completed_config(step, number, 8)


def test_an_ensemble_whose_step_takes_another_type_is_found_to_fail_its_load(tmp_path: Path) -> None:
    ensemble = repository(tmp_path, "FP16")
    lazy_step = StepModels({}, frozenset({"step"}))
    why = plan_refusal(ensemble, tmp_path, lazy_step, complete)
    assert why is not None and "input 'X' is TYPE_FP16 but ensemble input 'X' is TYPE_FP32" in why


def test_an_ensemble_whose_steps_fit_is_judged_and_a_step_not_there_fails_it(tmp_path: Path) -> None:
    ensemble = repository(tmp_path, "FP32")
    assert plan_refusal(ensemble, tmp_path, StepModels({}, frozenset({"step"})), complete) is None
    assert plan_refusal(ensemble, tmp_path, StepModels({}, frozenset()), complete) is not None  # not ready
    # A loaded step is judged by the config it serves, not its files.
    served = text_format.Parse(STEP.format("FP16"), mc.ModelConfig(name="step"))
    steps = StepModels.of(
        [ModelEntry("step", state=READY, order=[1], versions={1: loaded(served).versions[1]})], ()
    )
    why = plan_refusal(ensemble, tmp_path, steps, complete)
    assert why is not None and "TYPE_FP16" in why
