"""ensemble_fit.step_inputs: a step model's version that no longer fits its ensemble's step (a
renamed tensor, a required input the step does not give, a max_batch_size below the ensemble's
that the request's rows pass) is ChangedByReload (UNAVAILABLE), not a KeyError (INTERNAL) or the
step's INVALID_ARGUMENT; what fits is passed on as before."""

from __future__ import annotations

import numpy as np
import pytest

from server.errors import STATUS_BY_EXCEPTION, ChangedByReload, InvalidRequest, WrongShape
from server.models.config import parse_config
from server.models.ensemble_config import Step, plan_ensemble
from server.models.ensemble_fit import reshaped, step_inputs
from server.protocol.validate import Signature

STEP = Step(index=2, model="fast", version="", input_map={"x": "mid"}, output_map={"y": "out"})


def _signature(
    max_batch_size: int = 4, inputs: str = "x", outputs: str = "y", optional: str = ""
) -> Signature:
    tensors = [f'{{ name: "{n}" data_type: TYPE_FP32 dims: [ 1 ] }}' for n in inputs.split()]
    tensors += [
        f'{{ name: "{n}" data_type: TYPE_FP32 dims: [ 1 ] optional: true }}' for n in optional.split()
    ]
    outs = ", ".join(f'{{ name: "{n}" data_type: TYPE_FP32 dims: [ 1 ] }}' for n in outputs.split())
    text = f"max_batch_size: {max_batch_size}\ninput [ {', '.join(tensors)} ]\noutput [ {outs} ]\n"
    return Signature.from_config(parse_config(text, "fast"))


def _inputs(signature: Signature, rows: int = 1, ensemble_max: int = 4) -> dict[str, np.ndarray]:
    tensors = {"mid": np.zeros((rows, 1), np.float32)}
    return step_inputs(STEP, signature, "3", ensemble_max, tensors, {"mid": True})


def test_what_fits_is_passed_on_as_the_step_model_takes_it() -> None:
    inputs = _inputs(_signature(), rows=4)
    assert list(inputs) == ["x"] and inputs["x"].shape == (4, 1)
    assert list(_inputs(_signature(optional="extra"))) == ["x"]  # an optional input may go unmapped


@pytest.mark.parametrize(
    ("signature", "why"),
    [
        (_signature(inputs="z"), "it has no input 'x' (its inputs: ['z']), which the step's input_map names"),
        (
            _signature(outputs="w"),
            "it has no output 'y' (its outputs: ['w']), which the step's output_map names",
        ),
        (_signature(inputs="x q"), "it needs input 'q', which the step's input_map does not give"),
    ],
    ids=["input-renamed", "output-renamed", "input-added"],
)
def test_a_renamed_or_added_tensor_no_longer_fits(signature: Signature, why: str) -> None:
    with pytest.raises(ChangedByReload) as info:
        _inputs(signature)
    assert str(info.value).startswith(
        "model 'fast' (version 3, serving it now) no longer fits the ensemble: "
    )
    assert why in str(info.value)
    assert STATUS_BY_EXCEPTION[ChangedByReload].name == "UNAVAILABLE"


def test_a_narrower_max_batch_size_refuses_only_the_rows_it_cannot_take() -> None:
    narrow = _signature(max_batch_size=2)
    assert _inputs(narrow, rows=2)["x"].shape == (2, 1)
    for rows in (3, 4):
        why = f"its max_batch_size 2 is below the ensemble's 4, and the request has {rows} rows"
        with pytest.raises(ChangedByReload, match=why):
            _inputs(narrow, rows=rows)


@pytest.mark.parametrize(
    ("step_max", "ensemble_max", "rows"),
    [(2, 4, 5), (4, 4, 6), (0, 4, 3), (2, 0, 3)],
    ids=["past-the-ensembles-own", "not-narrower", "step-not-batching", "ensemble-not-batching"],
)
def test_rows_the_ensemble_itself_does_not_allow_are_left_to_the_steps_own_check(
    step_max: int, ensemble_max: int, rows: int
) -> None:
    """Its own check (Signature.check_inputs) answers them INVALID_ARGUMENT, as before."""
    assert (
        _inputs(_signature(max_batch_size=step_max), rows=rows, ensemble_max=ensemble_max)["x"].shape[0]
        == rows
    )


def test_a_shape_refused_is_the_reloads_only_when_the_steps_dims_changed_since_the_ensembles_load() -> None:
    signature = _signature()  # x: dims [1]
    with pytest.raises(WrongShape) as refused:
        signature.check_inputs({"x": np.zeros((1, 3), np.float32)})
    wrong = refused.value
    assert wrong.name == "x" and isinstance(wrong, InvalidRequest)  # INVALID_ARGUMENT
    shape = (1, 3)
    assert reshaped(STEP, signature, "3", wrong, (1,), shape) is wrong  # the dims it loaded against
    assert reshaped(STEP, signature, "3", wrong, None, shape) is wrong  # nothing known of the load
    assert reshaped(STEP, signature, "3", wrong, (2,), shape) is wrong  # [3] fits neither: the client's
    moved = reshaped(STEP, signature, "3", wrong, (3,), shape)  # it fitted the dims loaded against
    assert isinstance(moved, ChangedByReload)
    assert str(moved) == (
        "model 'fast' (version 3, serving it now) no longer fits the ensemble: its input 'x' takes "
        "dims [1], not [3] as when the ensemble loaded (it changed since the ensemble loaded: load "
        "either again so that they fit)"
    )


def test_the_plan_keeps_each_steps_input_dims_as_loaded() -> None:
    ensemble = parse_config(
        'platform: "ensemble"\nmax_batch_size: 4\ninput [ { name: "a" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
        'output [ { name: "b" data_type: TYPE_FP32 dims: [ 1 ] } ]\nensemble_scheduling { step [ { '
        'model_name: "fast" model_version: -1 input_map { key: "x" value: "a" } output_map { key: "y" '
        'value: "b" } } ] }\n',
        "ens",
    )
    step_config = parse_config(
        'max_batch_size: 4\ninput [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]\n',
        "fast",
    )
    plan = plan_ensemble(ensemble, "ens", lambda step: step_config)
    assert plan.step_dims == {1: {"x": (1,)}}
