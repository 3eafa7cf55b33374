"""Survivors of the 2026-12-05 mutation run in server/models/onnx_completion.py: a listed tensor's
first dim judged against the whole graph, a config's dims [1] taken for a graph scalar only, and the
hatch a data-sized first dim's refusal ends with."""

from __future__ import annotations

import pytest

from protos import model_config_pb2 as mc
from server.models.config import parse_config
from server.models.config_errors import ConfigError
from server.models.onnx_completion import OnnxTensor, complete_from_onnx

SOURCE = "m/config.pbtxt"


def test_a_listed_output_whose_first_dim_is_a_later_dim_of_an_input_is_refused_when_batching() -> None:
    """x [N, M] -> y [M] (a column sum): y's first dim is x's dim 1, not the batch. A config that lists
    both and batches is refused for y; judged without the graph (the mutant's `_model_dims` call
    without `graph`), y's first dim looked like a batch and the config was accepted."""
    config = parse_config(
        'max_batch_size: 4 input [{ name: "x" data_type: TYPE_FP32 dims: [ 3 ] }] '
        'output [{ name: "y" data_type: TYPE_FP32 dims: [ -1 ] }]',
        SOURCE,
    )
    inputs = [OnnxTensor("x", "tensor(float)", ["N", "M"])]
    outputs = [OnnxTensor("y", "tensor(float)", ["M"])]
    with pytest.raises(ConfigError) as caught:
        complete_from_onnx(config, inputs, outputs, source=SOURCE)
    assert str(caught.value) == (
        f"{SOURCE}: max_batch_size is 4 but ONNX output 'y' has shape ['M']: its first dim 'M' is dim 1 "
        "of 'x' ['N', 'M'], so it is not the batch dimension (batching would split it as rows); "
        "set max_batch_size: 0"
    )


def test_dims_1_listed_for_a_fixed_graph_dim_of_3_is_a_mismatch_not_a_scalar() -> None:
    """dims [1] stands for a scalar only when the graph's tensor is one (no dims past the batch); for
    a graph dim of 3 it is refused. The mutant that asked `_scalar_as_one` with no graph dims took it
    for a scalar and set an empty reshape, so requests of one element reached a graph wanting 3."""
    config = parse_config('max_batch_size: 4 input [{ name: "x" data_type: TYPE_FP32 dims: [ 1 ] }]', SOURCE)
    inputs = [OnnxTensor("x", "tensor(float)", ["N", 3])]
    outputs = [OnnxTensor("y", "tensor(float)", ["N", 3])]
    with pytest.raises(ConfigError) as caught:
        complete_from_onnx(config, inputs, outputs, source=SOURCE)
    assert str(caught.value) == (
        f"{SOURCE}: input 'x' dims (without the batch dimension) [1] do not match the ONNX model's [3] "
        "(-1 is variable)"
    )


def test_dims_1_for_a_variable_graph_dim_is_kept_without_a_reshape() -> None:
    """A graph dim of -1 takes dims [1] as they are: no reshape is added (with one, the model would be
    fed a scalar per row instead of a vector of one)."""
    config = parse_config('max_batch_size: 4 input [{ name: "x" data_type: TYPE_FP32 dims: [ 1 ] }]', SOURCE)
    inputs = [OnnxTensor("x", "tensor(float)", ["N", "K"])]
    outputs = [OnnxTensor("y", "tensor(float)", ["N", "K"])]
    done = complete_from_onnx(config, inputs, outputs, source=SOURCE)
    assert list(done.input[0].dims) == [1] and not done.input[0].HasField("reshape")


def test_dims_2_listed_for_a_graph_scalar_are_refused() -> None:
    """Only dims [1] may stand for a graph scalar (per row). The mutant `not graph_dims or ...` took
    any dims for one and set an empty reshape: dims [2] were accepted for a model reading one value."""
    config = parse_config('max_batch_size: 4 input [{ name: "x" data_type: TYPE_FP32 dims: [ 2 ] }]', SOURCE)
    inputs = [OnnxTensor("x", "tensor(float)", ["N"])]
    outputs = [OnnxTensor("y", "tensor(float)", ["N"])]
    with pytest.raises(ConfigError) as caught:
        complete_from_onnx(config, inputs, outputs, source=SOURCE)
    assert str(caught.value) == (
        f"{SOURCE}: input 'x' dims (without the batch dimension) [2] do not match the ONNX model's [] "
        "(-1 is variable)"
    )


def test_a_graph_scalar_listed_with_dims_1_gets_the_empty_reshape() -> None:
    """The case `_scalar_as_one` exists for, beside the refusals above: dims [1] on the wire and an
    empty reshape, as Triton's completion writes it."""
    config = parse_config('max_batch_size: 4 input [{ name: "x" data_type: TYPE_FP32 dims: [ 1 ] }]', SOURCE)
    inputs = [OnnxTensor("x", "tensor(float)", ["N"])]
    outputs = [OnnxTensor("y", "tensor(float)", ["N"])]
    done = complete_from_onnx(config, inputs, outputs, source=SOURCE)
    assert list(done.input[0].dims) == [1] and done.input[0].HasField("reshape")
    assert list(done.input[0].reshape.shape) == []


def test_a_data_sized_first_dim_refusal_ends_with_the_hatch_word_for_word() -> None:
    """An output whose first dim the data's values size (`not_batch` from the graph's ops) is refused
    with the way out: naming the dim as the inputs' first. Earlier tests read the hatch as a substring,
    which the mutant's "XX...XX" text still held."""
    config = mc.ModelConfig(name="nz", max_batch_size=8)
    inputs = [OnnxTensor("x", "tensor(float)", ["N", 2])]
    outputs = [OnnxTensor("idx", "tensor(int64)", ["K", 2], not_batch="sized by the data")]
    with pytest.raises(ConfigError) as caught:
        complete_from_onnx(config, inputs, outputs, source=SOURCE)
    assert str(caught.value) == (
        f"{SOURCE}: max_batch_size is 8 but ONNX output 'idx' has shape ['K', 2]: sized by the data, so it "
        "is not the batch dimension (batching would split it as rows); set max_batch_size: 0; if it is "
        "the batch, name it in the graph as the inputs' first dim"
    )
