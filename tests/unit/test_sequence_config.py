"""sequence_batching in config.pbtxt: completion hides state/control tensors; refusals name the field."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from batcher.sequence_types import ControlKind
from server.backends.batch_axes import from_model, to_model
from server.models.config import ConfigError, parse_config, validate_config
from server.models.onnx_completion import complete_from_onnx
from server.models.sequence_config import sequence_model
from tests.support import sequence_models as sm

ACC_IN = [("x", "tensor(float)", [None, 4]), ("acc", "tensor(float)", [None, 4])]
ACC_OUT = [("out", "tensor(float)", [None, 4]), ("acc_out", "tensor(float)", [None, 4])]
AXIS1_IN = [("x", "tensor(float)", [None, 3]), ("s", "tensor(float)", [2, None, 3])]
AXIS1_OUT = [("out", "tensor(float)", [None, 3]), ("s_out", "tensor(float)", [2, None, 3])]


def load(text: str, inputs: list, outputs: list, directory: Path = Path("/nonexistent")):  # type: ignore[no-untyped-def]
    config = complete_from_onnx(parse_config(text, "cfg"), inputs, outputs, source="cfg")
    validate_config(config, "cfg")
    return config, sequence_model(config, inputs, outputs, directory, "cfg")


def test_state_tensors_are_not_part_of_the_public_signature() -> None:
    config, model = load(sm.accumulator_config(idle_us=250_000), ACC_IN, ACC_OUT)
    assert [t.name for t in config.input] == ["x"] and [t.name for t in config.output] == ["out"]
    assert model is not None and model.spec.idle_s == 0.25 and model.batch_axes == {}
    (state,) = model.spec.states
    assert (state.input_name, state.output_name, state.initial.shape) == ("acc", "acc_out", (1, 4))
    assert not state.initial.flags.writeable


def test_the_default_idle_time_is_tritons_one_second() -> None:
    _, model = load(sm.accumulator_config(idle_us=0), ACC_IN, ACC_OUT)
    assert model is not None and model.spec.idle_s == 1.0


def test_a_state_batch_axis_parameter_applies_to_input_and_output() -> None:
    _, model = load(sm.AXIS1_CONFIG, AXIS1_IN, AXIS1_OUT)
    assert model is not None and model.batch_axes == {"s": 1, "s_out": 1}
    assert model.spec.states[0].initial.shape == (1, 2, 3)  # batch-first, as the batcher stores it
    batch_first = np.arange(2 * 2 * 3, dtype=np.float32).reshape(2, 2, 3)  # 2 sequences
    graph = to_model({"s": batch_first, "x": np.ones((2, 3))}, model.batch_axes)
    assert graph["s"].shape == (2, 2, 3) and graph["s"].flags.c_contiguous
    np.testing.assert_array_equal(graph["s"][:, 1], batch_first[1])
    np.testing.assert_array_equal(from_model({"s_out": graph["s"]}, {"s_out": 1})["s_out"], batch_first)


def test_controls_are_parsed_with_their_types_and_values() -> None:
    specs = [
        ("start", "tensor(int32)"),
        ("end", "tensor(float)"),
        ("ready", "tensor(bool)"),
        ("corrid", "tensor(uint64)"),
    ]
    inputs = [("x", "tensor(float)", [None, 1]), *((n, t, [None, 1]) for n, t in specs)]
    outputs = [("x_out", "tensor(float)", [None, 1]), *((f"{n}_out", t, [None, 1]) for n, t in specs)]
    _, model = load(sm.CONTROLS_CONFIG, inputs, outputs)
    assert model is not None
    got = {c.kind: (c.name, c.dtype.name, c.false_value, c.true_value) for c in model.spec.controls}
    assert got[ControlKind.START] == ("start", "int32", 0, 1)
    assert got[ControlKind.END] == ("end", "float32", 0.5, 2.5)
    assert got[ControlKind.READY] == ("ready", "bool", False, True)
    assert got[ControlKind.CORRID][:2] == ("corrid", "uint64")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda t: t.replace("max_batch_size: 8", 'input [ { name: "x" dims: [ -1, 4 ] } ]'),
            r"state\[0\] input 'acc': dims \[4\] do not match the ONNX model's shape \[None, 4\] \(no batch",
        ),
        (
            lambda t: t.replace("sequence_batching {", "sequence_batching { iterative_sequence: true"),
            "iterative_sequence",
        ),
        (lambda t: t.replace('output_name: "acc_out"', 'output_name: "nope"'), "'nope' is not an output"),
        (
            lambda t: t.replace("TYPE_FP32 dims: [ 4 ] initial", "TYPE_FP64 dims: [ 4 ] initial"),
            "FP64 does not match",
        ),
        (lambda t: t.replace("dims: [ 4 ] initial", "dims: [ 5 ] initial"), "do not match"),
        (
            lambda t: t.replace("dims: [ 4 ] initial", "use_growable_memory: true dims: [ 4 ] initial"),
            "use_growable_memory",
        ),
        (lambda t: t.replace("oldest {", "oldest { preferred_batch_size: 16"), "preferred_batch_size 16"),
        (lambda t: t + "response_cache { enable: true }", "response_cache"),
        (
            lambda t: t + 'parameters { key: "sequence_state_batch_axis" value: { string_value: "x:1" } }',
            "'x' is not a state input_name",
        ),
    ],
)
def test_what_cannot_be_served_is_refused_naming_the_field(edit, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=message):
        load(edit(sm.accumulator_config()), ACC_IN, ACC_OUT)


def test_an_initial_state_file_must_have_the_states_size(tmp_path: Path) -> None:
    (tmp_path / "initial_state").mkdir()
    (tmp_path / "initial_state" / "init.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    _, model = load(sm.accumulator_config(initial_file="init.bin"), ACC_IN, ACC_OUT, tmp_path)
    assert model is not None and model.spec.states[0].initial.tolist() == [[0, 1, 2, 3]]
    (tmp_path / "initial_state" / "init.bin").write_bytes(b"\0" * 12)
    with pytest.raises(ConfigError, match="has 12 bytes, expected 16"):
        load(sm.accumulator_config(initial_file="init.bin"), ACC_IN, ACC_OUT, tmp_path)


def test_a_model_without_a_batch_dimension_has_unbatched_controls_and_state() -> None:
    """max_batch_size 0 (Triton's nobatch sequence models): the graph's tensors have no batch axis."""
    text = sm.accumulator_config().replace("max_batch_size: 8", "max_batch_size: 0")
    inputs = [("x", "tensor(float)", [4]), ("acc", "tensor(float)", [4])]
    outputs = [("out", "tensor(float)", [4]), ("acc_out", "tensor(float)", [4])]
    _, model = load(text, inputs, outputs)
    assert model is not None and not model.spec.batched and model.spec.states[0].initial.shape == (4,)


def test_a_string_state_starts_as_empty_strings(tmp_path: Path) -> None:
    text = sm.accumulator_config().replace("TYPE_FP32", "TYPE_STRING")
    inputs = [("x", "tensor(string)", [None, 4]), ("acc", "tensor(string)", [None, 4])]
    outputs = [("out", "tensor(string)", [None, 4]), ("acc_out", "tensor(string)", [None, 4])]
    _, model = load(text, inputs, outputs)
    assert model is not None and model.spec.states[0].initial.tolist() == [[b""] * 4]
    assert model.spec.initial_bytes == 0
    (tmp_path / "initial_state").mkdir()
    (tmp_path / "initial_state" / "init.bin").write_bytes(b"abcd")
    with_file = sm.accumulator_config(initial_file="init.bin").replace("TYPE_FP32", "TYPE_STRING")
    with pytest.raises(ConfigError, match="data_file: not supported for a TYPE_STRING state"):
        load(with_file, inputs, outputs, tmp_path)


def test_a_variable_state_dim_starts_as_one() -> None:
    """Triton's rule for a state with dims [-1] and no initial_state dims (its variable-shape models)."""
    text = sm.accumulator_config().replace(
        'dims: [ 4 ] initial_state { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true name: "zeros" }',
        "dims: [ -1 ]",
    )
    inputs = [("x", "tensor(float)", [None, None]), ("acc", "tensor(float)", [None, None])]
    outputs = [("out", "tensor(float)", [None, None]), ("acc_out", "tensor(float)", [None, None])]
    _, model = load(text, inputs, outputs)
    assert model is not None and model.spec.states[0].initial.shape == (1, 1)
