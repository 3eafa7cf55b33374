"""What a sequence model's states and a config's inputs may say (a Triton-user tester, session 49).
Two states of one input_name had loaded, the last one's initial state winning with no word; an
initial_state without a name or without zero_data/data_file had loaded as zeros (Triton refuses
all three at load). A control or state listed under `input` was refused as "not in the ONNX model",
which has it."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from server.models.config import ConfigError
from tests.support import sequence_models as sm
from tests.unit.test_sequence_config import ACC_IN, ACC_OUT, load

ZEROS = 'initial_state { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true name: "zeros" }'
STATE = 'input_name: "acc" output_name: "acc_out" data_type: TYPE_FP32 dims: [ 4 ] '


def _two_states(first: str, second: str) -> str:
    return sm.accumulator_config().replace(
        f"state [ {{ {STATE}{ZEROS} }} ]", f"state [ {{ {STATE}{first} }}, {{ {STATE}{second} }} ]"
    )


FILE = 'initial_state { data_type: TYPE_FP32 dims: [ 4 ] data_file: "init.bin" name: "init" }'


@pytest.mark.parametrize(("first", "second"), [(ZEROS, FILE), (FILE, ZEROS)])
def test_two_states_of_one_input_are_refused_whichever_comes_first(first: str, second: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(_two_states(first, second), ACC_IN, ACC_OUT)
    assert str(caught.value) == (
        "cfg: sequence_batching.state[1]: input_name 'acc' is also state[0]'s "
        "(each state input is listed once)"
    )


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace(' name: "zeros"', ""), "initial_state: name is required"),
        (lambda t: t.replace(" zero_data: true", ""), "initial_state: zero_data or data_file is required"),
        (
            lambda t: t.replace(
                "initial_state { data_type: TYPE_FP32 dims: [ 4 ]", "initial_state { data_type: TYPE_INT32"
            ),
            "initial_state: data_type differs from the state's",
        ),
    ],
)
def test_an_initial_state_says_its_name_its_data_and_the_states_type(
    edit: Callable[[str], str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(edit(sm.accumulator_config()), ACC_IN, ACC_OUT)
    assert str(caught.value) == f"cfg: sequence_batching.state[0].{message}"


def test_an_initial_state_of_the_states_type_and_no_dims_starts_as_zeros() -> None:
    text = sm.accumulator_config().replace(
        "initial_state { data_type: TYPE_FP32 dims: [ 4 ]", "initial_state {"
    )
    _, model = load(text, ACC_IN, ACC_OUT)
    assert model is not None and model.spec.states[0].initial.tolist() == [[0.0] * 4]


START = "{ kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] }"
CONTROL = f'control_input [ {{ name: "start" control [ {START} ] }} ]'


@pytest.mark.parametrize(
    ("listed", "role"),
    [
        (
            'input [ { name: "acc" data_type: TYPE_FP32 dims: [ 4 ] } ]',
            "input 'acc' is a sequence_batching state's input_name",
        ),
        (
            'input [ { name: "start" data_type: TYPE_INT32 dims: [ 1 ] } ]',
            "input 'start' is a sequence_batching control_input",
        ),
    ],
)
def test_a_tensor_the_server_feeds_listed_as_the_clients_is_refused_as_such(listed: str, role: str) -> None:
    text = sm.accumulator_config().replace("sequence_batching {", f"{listed}\nsequence_batching {{ {CONTROL}")
    inputs = [*ACC_IN, ("start", "tensor(int32)", [None, 1])]
    with pytest.raises(ConfigError) as caught:
        load(text, inputs, ACC_OUT)
    assert str(caught.value) == (
        f"cfg: {role}, which the server feeds, not the client: remove it from the config's inputs"
    )


def test_a_state_output_listed_as_an_output_is_answered_too() -> None:
    # Triton's way to give the client the state: list its output_name under output (it had been
    # refused as "not in the ONNX model", then as the server's).
    listed = 'output [ { name: "acc_out" data_type: TYPE_FP32 dims: [ 4 ] } ]'
    config, model = load(
        sm.accumulator_config().replace("sequence_batching {", f"{listed}\nsequence_batching {{"),
        ACC_IN,
        ACC_OUT,
    )
    assert sorted(o.name for o in config.output) == ["acc_out", "out"]
    assert model is not None and model.spec.answered_states == {"acc_out"}
    _, unlisted = load(sm.accumulator_config(), ACC_IN, ACC_OUT)
    assert unlisted is not None and unlisted.spec.answered_states == frozenset()


def test_a_batch_inputs_target_listed_as_an_input_is_refused_as_such() -> None:
    text = """
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "n" data_type: TYPE_FP32 dims: [ 1 ] } ]
batch_input [ { kind: BATCH_ELEMENT_COUNT target_name: "n" data_type: TYPE_FP32 source_input: "x" } ]
"""
    inputs = [("x", "tensor(float)", [None, 4]), ("n", "tensor(float)", [None, 1])]
    with pytest.raises(ConfigError) as caught:
        load(text, inputs, [("y", "tensor(float)", [None, 4])])
    assert str(caught.value).startswith(
        "cfg: input 'n' is a batch_input's target_name, which the server feeds"
    )
