"""Ensemble configs refused as Triton refuses them, each message naming the step or the field."""

from __future__ import annotations

import pytest

from protos import model_config_pb2 as mc
from server.models.config import ConfigError, parse_config, validate_config
from server.models.ensemble_config import Step, order, plan_ensemble
from tests.support.ensemble_repo import ENSEMBLES, _step, ensemble

STEP_MODEL = """
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ -1 ] } ]
"""
TWO_INPUTS = """
max_batch_size: 8
input [ { name: "a" data_type: TYPE_FP32 dims: [ -1 ] }, { name: "b" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ -1 ] } ]
"""


def _config(text: str, name: str = "e") -> mc.ModelConfig:
    config = parse_config(text, "config.pbtxt")
    config.name = name
    return config


def _models(name: str) -> mc.ModelConfig:
    texts = {
        "add": TWO_INPUTS,
        "small": STEP_MODEL.replace("max_batch_size: 8", "max_batch_size: 2"),
        "ints": STEP_MODEL.replace("TYPE_FP32", "TYPE_INT32"),
        "nested": ENSEMBLES["linear"],
    }
    if name == "absent":
        raise ConfigError(f"unknown model '{name}'")
    return _config(texts.get(name, STEP_MODEL), name)


def _plan(text: str) -> list[int]:
    config = _config(text)
    validate_config(config, "config.pbtxt")
    return [s.index for s in plan_ensemble(config, "config.pbtxt", lambda s: _models(s.model)).steps]


def test_valid_ensembles_are_ordered_by_dependency() -> None:
    assert _plan(ENSEMBLES["linear"]) == [1, 2]
    assert _plan(ENSEMBLES["dag"]) == [2, 3, 1]  # the combining step, listed first, runs last


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            ensemble(
                [
                    _step("m", {"x": "B"}, {"y": "A"}),
                    _step("m", {"x": "A"}, {"y": "B"}),
                    _step("m", {"x": "IN"}, {"y": "OUT"}),
                ]
            ),
            "ensemble 'e' step 1 (model 'm') is in a cycle",
        ),
        (
            ensemble([_step("m", {"x": "IN"}, {"y": "OUT"}), _step("n", {"x": "IN"}, {"y": "OUT"})]),
            "ensemble 'e' step 2 (model 'n') writes 'OUT', already written by step 1",
        ),
        (
            ensemble([_step("m", {"x": "IN"}, {"y": "OUT"})], inputs=("IN", "UNUSED")),
            "ensemble 'e' input 'UNUSED' is not read by any step",
        ),
        (
            ensemble([_step("m", {"x": "IN"}, {"y": "T"})]),
            "ensemble 'e' output 'OUT' is not written by any step",
        ),
        (
            ensemble([_step("m", {"x": "NOWHERE"}, {"y": "OUT"}), _step("m", {"x": "IN"}, {"y": "T"})]),
            "step 1 (model 'm') input_map 'x' reads 'NOWHERE', which is neither an ensemble input",
        ),
        (
            ensemble([_step("m", {"x": "IN"}, {"y": "IN"})]),
            "step 1 (model 'm') writes 'IN', an ensemble input",
        ),
        (ensemble([]), "ensemble_scheduling needs at least one step"),
        (
            ensemble([_step("m", {"x": "IN"}, {"y": "OUT"})]) + "instance_group [ { count: 1 } ]",
            "instance_group cannot be set on an ensemble",
        ),
        (
            'max_batch_size: 1 ensemble_scheduling { step { model_name: "m" } }',
            'ensemble_scheduling needs platform "ensemble"',
        ),
        (
            ENSEMBLES["linear"].replace(
                "ensemble_scheduling {", "ensemble_scheduling { max_inflight_requests: 2"
            ),
            "ensemble_scheduling.max_inflight_requests is not supported",
        ),
    ],
)
def test_bad_ensemble_configs_are_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_config(_config(text), "config.pbtxt")
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("step", "message"),
    [
        (_step("absent", {"x": "IN"}, {"y": "OUT"}), "step 1 (model 'absent'): unknown model 'absent'"),
        (_step("m", {"z": "IN"}, {"y": "OUT"}), "step 1 (model 'm'): input_map key 'z' is not an input"),
        (_step("m", {"x": "IN"}, {"w": "OUT"}), "step 1 (model 'm'): output_map key 'w' is not an output"),
        (
            _step("add", {"a": "IN"}, {"y": "OUT"}),
            "step 1 (model 'add'): inputs ['b'] are not in its input_map",
        ),
        (_step("small", {"x": "IN"}, {"y": "OUT"}), "max_batch_size 2 is below the ensemble's 8"),
        (
            _step("ints", {"x": "IN"}, {"y": "OUT"}),
            "input 'x' is TYPE_INT32 but ensemble input 'IN' is TYPE_FP32",
        ),
    ],
)
def test_steps_checked_against_their_models(step: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _plan(ensemble([step]))
    assert message in str(info.value)


def test_order_needs_no_step_models() -> None:
    steps = order(_config(ENSEMBLES["dag"]), "config.pbtxt")
    assert all(isinstance(s, Step) for s in steps) and [s.model for s in steps] == [
        "add_one",
        "double",
        "add",
    ]


NOBATCH_16 = """
max_batch_size: 0
input [ { name: "x" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 16 ] } ]
"""


def test_tensors_pass_between_batching_and_non_batching_models_as_triton_allows() -> None:
    # Triton's rule: the dims agree ([16] and a batching step's [-1]) or the full shapes do (a
    # batching ensemble's [-1, 16] and a non-batching step's [-1, 16]); the step's max_batch_size
    # is compared with the ensemble's only when the step batches.
    nobatch_ensemble = """
name: "e"
platform: "ensemble"
max_batch_size: 0
input [ { name: "X" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 16 ] } ]
ensemble_scheduling { step [
  { model_name: "batching" model_version: -1
    input_map { key: "x" value: "X" } output_map { key: "y" value: "T" } },
  { model_name: "nobatch" model_version: -1
    input_map { key: "x" value: "T" } output_map { key: "y" value: "Y" } }
] }
"""
    models = {
        "batching": STEP_MODEL,
        "nobatch": NOBATCH_16,
        "nobatch_full": NOBATCH_16.replace("[ 16 ]", "[ -1, 16 ]"),
    }

    def step_model(step: Step) -> mc.ModelConfig:
        return _config(models[step.model], step.model)

    config = _config(nobatch_ensemble)
    plan = plan_ensemble(config, "config.pbtxt", step_model)
    assert (plan.batching, plan.output_dims) == (False, ((16,),))
    batching_ensemble = nobatch_ensemble.replace("max_batch_size: 0", "max_batch_size: 8").replace(
        '"nobatch"', '"nobatch_full"'
    )
    assert plan_ensemble(_config(batching_ensemble), "config.pbtxt", step_model).batching
    models["nobatch_full"] = NOBATCH_16.replace("[ 16 ]", "[ 3, 16, 2 ]")  # agrees in neither way
    with pytest.raises(ConfigError, match=r"has shape \[3, 16, 2\] but step 1 output 'y' has \[-1, -1\]"):
        plan_ensemble(_config(batching_ensemble), "config.pbtxt", step_model)
