"""plan_ensemble's plan and refusals: the batch dimension (max_batch_size 0, 1 and more), reshape,
the plan's fields, and the whole refusal text when an ensemble output disagrees with its step's."""

from __future__ import annotations

import pytest

from protos import model_config_pb2 as mc
from server.models.config import ConfigError, parse_config
from server.models.config_tensors import ReshapePlan
from server.models.ensemble_config import EnsemblePlan, Step, agree, plan_ensemble
from tests.support.ensemble_repo import _step

SOURCE = "models/e/config.pbtxt"


def _tensor(kind: str, name: str, dims: str, data_type: str = "TYPE_FP32", reshape: str = "") -> str:
    shaped = f" reshape {{ shape: [ {reshape} ] }}" if reshape else ""
    return f'{kind} {{ name: "{name}" data_type: {data_type} dims: [ {dims} ]{shaped} }}\n'


def _ensemble(max_batch_size: int, tensors: list[str], steps: list[str]) -> mc.ModelConfig:
    text = (
        f'platform: "ensemble"\nmax_batch_size: {max_batch_size}\n'
        + "".join(tensors)
        + "ensemble_scheduling {\n"
        + "".join(steps)
        + "}\n"
    )
    config = parse_config(text, SOURCE)
    config.name = "e"
    return config


def _model(max_batch_size: int, inputs: dict[str, str], outputs: dict[str, str],
           data_type: str = "TYPE_FP32") -> mc.ModelConfig:  # fmt: skip
    """A step model: tensor name -> its dims (as written in config.pbtxt)."""
    text = f"max_batch_size: {max_batch_size}\n"
    text += "".join(_tensor("input", n, d, data_type) for n, d in inputs.items())
    text += "".join(_tensor("output", n, d, data_type) for n, d in outputs.items())
    return parse_config(text, "step/config.pbtxt")


def _plan(config: mc.ModelConfig, models: dict[str, mc.ModelConfig]) -> EnsemblePlan:
    def step_config(step: Step) -> mc.ModelConfig:
        return models[step.model]

    return plan_ensemble(config, SOURCE, step_config)


def _refusal(config: mc.ModelConfig, models: dict[str, mc.ModelConfig]) -> str:
    with pytest.raises(ConfigError) as caught:
        _plan(config, models)
    return str(caught.value)


def _unary(max_batch_size: int, dims: str, out_dims: str | None = None) -> mc.ModelConfig:
    return _model(max_batch_size, {"x": dims}, {"y": out_dims if out_dims is not None else dims})


def test_plan_fields_inputs_in_order_max_batch_size_and_reshape() -> None:
    # Input "B" is listed first and reshaped from [8] to [2, 4]: the step sees [2, 4].
    config = _ensemble(
        4,
        [
            _tensor("input", "B", "8", reshape="2, 4"),
            _tensor("input", "A", "2, 4"),
            _tensor("output", "OUT", "2, 4"),
        ],
        [_step("add", {"a": "A", "b": "B"}, {"y": "OUT"})],
    )
    plan = _plan(config, {"add": _model(8, {"a": "2, 4", "b": "2, 4"}, {"y": "2, 4"})})
    assert plan.name == "e"
    assert plan.inputs == ("B", "A")
    assert plan.outputs == ("OUT",)
    assert plan.batching is True
    assert plan.max_batch_size == 4
    assert plan.output_dims == ((2, 4),)
    assert plan.step_dims == {1: {"a": (2, 4), "b": (2, 4)}}
    assert plan.reshape == ReshapePlan(True, {"B": (2, 4)}, {})
    assert [s.index for s in plan.steps] == [1]


def test_a_reshaped_input_is_checked_with_its_reshape_not_its_dims() -> None:
    # The step takes [8]: the reshaped input ([2, 4] to the steps) does not fit it.
    config = _ensemble(
        0,
        [_tensor("input", "IN", "8", reshape="2, 4"), _tensor("output", "OUT", "8")],
        [_step("m", {"x": "IN"}, {"y": "OUT"})],
    )
    assert _refusal(config, {"m": _unary(0, "8")}) == (
        f"{SOURCE}: ensemble 'e' step 1 (model 'm'): input 'x' has shape [8] but ensemble input 'IN' "
        "has [2, 4] (-1 is variable)"
    )
    plan = _plan(config, {"m": _model(0, {"x": "2, 4"}, {"y": "8"})})
    assert plan.reshape == ReshapePlan(False, {"IN": (2, 4)}, {})
    assert plan.step_dims == {1: {"x": (2, 4)}}


def test_a_reshaped_output_is_checked_and_planned_with_its_reshape() -> None:
    config = _ensemble(
        2,
        [_tensor("input", "IN", "2, 4"), _tensor("output", "OUT", "8", reshape="2, 4")],
        [_step("m", {"x": "IN"}, {"y": "OUT"})],
    )
    plan = _plan(config, {"m": _unary(8, "2, 4")})
    assert plan.output_dims == ((2, 4),)
    assert plan.reshape == ReshapePlan(True, {}, {"OUT": (8,)})


def test_a_plan_without_reshape_has_none() -> None:
    config = _ensemble(
        2,
        [_tensor("input", "IN", "4"), _tensor("output", "OUT", "4")],
        [_step("m", {"x": "IN"}, {"y": "OUT"})],
    )
    plan = _plan(config, {"m": _unary(2, "4")})
    assert (plan.reshape, plan.max_batch_size, plan.inputs) == (None, 2, ("IN",))


@pytest.mark.parametrize("step_batch", [0, 1, 8])
def test_an_ensemble_of_max_batch_size_1_batches(step_batch: int) -> None:
    config = _ensemble(
        1,
        [_tensor("input", "IN", "4"), _tensor("output", "OUT", "4")],
        [_step("m", {"x": "IN"}, {"y": "OUT"})],
    )
    plan = _plan(config, {"m": _unary(step_batch, "4")})
    assert (plan.batching, plan.max_batch_size) == (True, 1)


def test_an_ensemble_of_max_batch_size_0_does_not_batch() -> None:
    config = _ensemble(
        0,
        [_tensor("input", "IN", "4"), _tensor("output", "OUT", "4")],
        [_step("m", {"x": "IN"}, {"y": "OUT"})],
    )
    plan = _plan(config, {"m": _unary(0, "4")})
    assert (plan.batching, plan.max_batch_size) == (False, 0)


def test_a_step_of_max_batch_size_1_is_below_an_ensemble_of_4() -> None:
    config = _ensemble(
        4,
        [_tensor("input", "IN", "4"), _tensor("output", "OUT", "4")],
        [_step("one", {"x": "IN"}, {"y": "OUT"})],
    )
    assert _refusal(config, {"one": _unary(1, "4")}) == (
        f"{SOURCE}: ensemble 'e' step 1 (model 'one'): max_batch_size 1 is below the ensemble's 4"
    )
    assert _plan(config, {"one": _unary(4, "4")}).max_batch_size == 4
    assert _plan(config, {"one": _unary(0, "-1, 4")}).batching  # a non-batching step: full shapes


@pytest.mark.parametrize("step_batch", [1, 8])
def test_a_batching_step_takes_a_non_batching_ensembles_full_shape(step_batch: int) -> None:
    # The ensemble's [2, 4] (no batch dim) is the step's [-1, 4] ([-1] + dims); its output [4] with a
    # batch dim ([-1, 4]) is the ensemble's [2, 4].
    config = _ensemble(
        0,
        [_tensor("input", "IN", "2, 4"), _tensor("output", "OUT", "2, 4")],
        [_step("m", {"x": "IN"}, {"y": "OUT"})],
    )
    plan = _plan(config, {"m": _unary(step_batch, "4")})
    assert (plan.batching, plan.output_dims, plan.step_dims) == (False, ((2, 4),), {1: {"x": (4,)}})


@pytest.mark.parametrize("step_batch", [1, 8])
def test_a_batching_steps_shape_in_a_refusal_leads_with_minus_1(step_batch: int) -> None:
    config = _ensemble(
        0,
        [_tensor("input", "IN", "2, 3"), _tensor("output", "OUT", "2, 3")],
        [_step("m", {"x": "IN"}, {"y": "OUT"})],
    )
    assert _refusal(config, {"m": _unary(step_batch, "4")}) == (
        f"{SOURCE}: ensemble 'e' step 1 (model 'm'): input 'x' has shape [-1, 4] but ensemble input 'IN' "
        "has [2, 3] (-1 is variable)"
    )


@pytest.mark.parametrize("step_batch", [1, 8])
def test_a_batching_steps_output_carries_a_batch_dim(step_batch: int) -> None:
    # The step's output [4] with its batch dim is [-1, 4]: a non-batching ensemble's [3, 4] agrees.
    config = _ensemble(
        0,
        [_tensor("input", "IN", "4"), _tensor("output", "OUT", "3, 4")],
        [_step("m", {"x": "IN"}, {"y": "OUT"})],
    )
    assert _plan(config, {"m": _unary(step_batch, "4")}).output_dims == ((3, 4),)
    assert _refusal(config, {"m": _unary(0, "4")}) == (
        f"{SOURCE}: ensemble 'e': output 'OUT' has shape [3, 4] but step 1 output 'y' has [4] "
        "(-1 is variable)"
    )


@pytest.mark.parametrize("ensemble_batch", [1, 4])
def test_an_ensemble_output_that_disagrees_with_its_step_is_refused(ensemble_batch: int) -> None:
    config = _ensemble(
        ensemble_batch,
        [_tensor("input", "IN", "4"), _tensor("output", "OUT", "3")],
        [_step("m", {"x": "IN"}, {"y": "OUT"})],
    )
    assert _refusal(config, {"m": _unary(8, "4")}) == (
        f"{SOURCE}: ensemble 'e': output 'OUT' has shape [-1, 3] but step 1 output 'y' has [-1, 4] "
        "(-1 is variable)"
    )


def test_an_ensemble_output_of_another_data_type_is_refused() -> None:
    config = _ensemble(
        2,
        [_tensor("input", "IN", "4"), _tensor("output", "OUT", "4", data_type="TYPE_INT32")],
        [_step("m", {"x": "IN"}, {"y": "OUT"})],
    )
    assert _refusal(config, {"m": _unary(8, "4")}) == (
        f"{SOURCE}: ensemble 'e': output 'OUT' is TYPE_INT32 but step 1 output 'y' is TYPE_FP32"
    )


def test_an_ensemble_output_from_a_second_step_names_that_step() -> None:
    config = _ensemble(
        2,
        [_tensor("input", "IN", "4"), _tensor("output", "OUT", "5")],
        [_step("m", {"x": "IN"}, {"y": "T"}), _step("m", {"x": "T"}, {"y": "OUT"})],
    )
    assert _refusal(config, {"m": _unary(8, "4")}) == (
        f"{SOURCE}: ensemble 'e': output 'OUT' has shape [-1, 5] but step 2 output 'y' has [-1, 4] "
        "(-1 is variable)"
    )


def test_the_graph_refusals_name_the_source() -> None:
    unwritten = _ensemble(
        2,
        [_tensor("input", "IN", "4"), _tensor("output", "OUT", "4")],
        [_step("m", {"x": "IN"}, {"y": "T"})],
    )
    assert _refusal(unwritten, {"m": _unary(8, "4")}) == (
        f"{SOURCE}: ensemble 'e' output 'OUT' is not written by any step"
    )
    cycle = _ensemble(
        2,
        [_tensor("input", "IN", "4"), _tensor("output", "OUT", "4")],
        [_step("add", {"a": "IN", "b": "T"}, {"y": "OUT"}), _step("m", {"x": "OUT"}, {"y": "T"})],
    )
    assert _refusal(cycle, {"m": _unary(8, "4")}).startswith(
        f"{SOURCE}: ensemble 'e' step 1 (model 'add') is in a cycle"
    )


@pytest.mark.parametrize(
    ("a", "b", "agreed"),
    [
        ([2, 4], [2, 4], True),
        ([-1, 4], [3, 4], True),
        ([2, 4], [2, 5], False),
        ([4], [4, 1], False),
        ([], [], True),
    ],
)
def test_agree(a: list[int], b: list[int], agreed: bool) -> None:
    assert agree(a, b) is agreed
    assert agree(b, a) is agreed
