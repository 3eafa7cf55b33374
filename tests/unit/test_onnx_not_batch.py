"""Completion from the ONNX graph tells a variable first dim that is provably not the batch: its
symbol names a later dim of some graph input or output (x [N, M] -> y [M])."""

from __future__ import annotations

import pytest

from protos import model_config_pb2 as mc
from server.models.config import parse_config
from server.models.config_errors import ConfigError
from server.models.onnx_completion import complete_from_onnx

COLUMN_SUMS_IN = [("x", "tensor(float)", ["N", "M"])]
COLUMN_SUMS_OUT = [("y", "tensor(float)", ["M"])]


def test_a_graph_whose_output_is_a_later_input_dim_is_not_batched() -> None:
    """Left to completion, column sums (ReduceSum over axis 0) run each request alone, whole: batched,
    three coalesced requests had each got one element of the batch's column sums, OK."""
    done = complete_from_onnx(
        mc.ModelConfig(name="m"), COLUMN_SUMS_IN, COLUMN_SUMS_OUT, default_max_batch_size=8
    )
    assert done.max_batch_size == 0 and not done.HasField("dynamic_batching")
    assert [list(t.dims) for t in (*done.input, *done.output)] == [[-1, -1], [-1]]


@pytest.mark.parametrize(
    ("inputs", "outputs", "named"),
    [
        (COLUMN_SUMS_IN, COLUMN_SUMS_OUT, "output 'y' has shape ['M']: its first dim 'M' is dim 1 of 'x'"),
        # a Gram matrix x @ x^T: each request's rows would be compared with the other requests'
        (
            [("x", "tensor(float)", ["N", 3])],
            [("g", "tensor(float)", ["N", "N"])],
            "its first dim 'N' is dim 1 of 'g'",
        ),
        # a second input indexed by the first's feature dim
        (
            [("x", "tensor(float)", ["N", "F"]), ("w", "tensor(float)", ["F", 2])],
            [("y", "tensor(float)", ["N", 2])],
            "input 'w' has shape ['F', 2]: its first dim 'F' is dim 1 of 'x'",
        ),
    ],
)
def test_batching_said_in_the_config_is_refused_naming_the_tensor(
    inputs: list[tuple[str, str, list[int | str]]],
    outputs: list[tuple[str, str, list[int | str]]],
    named: str,
) -> None:
    config = parse_config("max_batch_size: 8", "models/m/config.pbtxt")
    with pytest.raises(ConfigError, match="not the batch dimension") as err:
        complete_from_onnx(config, inputs, outputs)
    assert named in str(err.value) and "max_batch_size: 0" in str(err.value)
    # Left to completion, the same graph does not batch.
    assert complete_from_onnx(mc.ModelConfig(name="m"), inputs, outputs).max_batch_size == 0


@pytest.mark.parametrize(
    "outputs",
    [
        [("y", "tensor(float)", ["N", "M"])],  # the batch symbol again, first
        [("y", "tensor(float)", ["unk__7", 2])],  # a fresh symbol (tf2onnx): may be the batch
        [("y", "tensor(float)", [None, "M"])],  # unnamed
    ],
)
def test_first_dims_that_may_be_the_batch_still_batch(
    outputs: list[tuple[str, str, list[int | str | None]]],
) -> None:
    done = complete_from_onnx(mc.ModelConfig(name="m"), COLUMN_SUMS_IN, outputs, default_max_batch_size=8)
    assert done.max_batch_size == 8 and done.HasField("dynamic_batching")


def test_a_symbol_no_input_has_repeated_in_an_output_is_the_exporters_guess() -> None:
    # torch's legacy exporter names an image generator's output after a Pad it could not infer:
    # ['Tanh181_dim_0', 3, 'Tanh181_dim_0', 'Tanh181_dim_3']. Read as proof, no config could batch
    # the model, rows_independent included (a tester, session 50).
    image = [("x", "tensor(float)", ["batch", 3, 32, 32])]
    guessed = [("y", "tensor(float)", ["Tanh181_dim_0", 3, "Tanh181_dim_0", "Tanh181_dim_3"])]
    done = complete_from_onnx(parse_config("max_batch_size: 8", "cfg"), image, guessed)
    assert done.max_batch_size == 8 and [list(o.dims) for o in done.output] == [[3, -1, -1]]
    assert (
        complete_from_onnx(mc.ModelConfig(name="m"), image, guessed, default_max_batch_size=8).max_batch_size
        == 8
    )
    # A symbol an input has stays proof: the Gram matrix's 'N' is x's own.
    named = [("g", "tensor(float)", ["N", "N"])]
    with pytest.raises(ConfigError, match="its first dim 'N' is dim 1 of 'g'"):
        complete_from_onnx(
            parse_config("max_batch_size: 8", "cfg"), [("x", "tensor(float)", ["N", 3])], named
        )
