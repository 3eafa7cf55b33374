"""Completion of a graph whose output mixes the rows of a batch (`OnnxTensor.mixes_rows`, read by
server/backends/onnx_row_mixing.py): left unbatched when nothing is said, refused where the config
batches requests together, allowed where each request runs alone or the config vouches for it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper, numpy_helper

from protos import model_config_pb2 as mc
from server.models.completion import complete_version
from server.models.config_errors import ConfigError
from server.models.onnx_completion import OnnxTensor, complete_from_onnx
from server.models.repository import ModelSource
from tests.support.zoo_models import softmax_rows

WHY = "the Softmax node making 'y' works along the batch's axis, axis 0 of 'x' ['N', 3]"
INPUTS = [OnnxTensor("x", "tensor(float)", ["N", 3])]
OUTPUTS = [
    OnnxTensor("y", "tensor(float)", ["N", 3], mixes_rows=WHY),
    OnnxTensor("z", "tensor(float)", ["N", 3]),
]
VOUCHED = 'parameters { key: "rows_independent" value: { string_value: "true" } }\n'


def _complete(text: str) -> mc.ModelConfig:
    config = text_format.Parse(text, mc.ModelConfig())
    return complete_from_onnx(config, INPUTS, OUTPUTS, default_max_batch_size=16, source="cfg")


def test_nothing_said_completes_a_mixing_graph_unbatched_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    done = _complete("")
    assert done.max_batch_size == 0 and not done.HasField("dynamic_batching")
    assert [list(o.dims) for o in done.output] == [[-1, 3], [-1, 3]]
    # It had been silent: a per-row model the reading took for a mixing one lost its batching.
    assert caplog.messages == [
        "cfg: completed with max_batch_size 0, each request run alone: ONNX output 'y' mixes the rows of "
        f"a batch ({WHY}); if its rows are in fact independent, set parameters 'rows_independent' to 'true'"
    ]
    caplog.clear()
    _complete("max_batch_size: 8")  # said in the config: nothing to tell
    _complete(VOUCHED)
    fixed = [OnnxTensor("x", "tensor(float)", [2, 3])]  # could not batch anyway
    complete_from_onnx(mc.ModelConfig(), fixed, [OnnxTensor("y", "tensor(float)", [2, 3], mixes_rows=WHY)])
    assert caplog.messages == []


def test_the_configs_word_completes_it_batched() -> None:
    done = _complete(VOUCHED)
    assert done.max_batch_size == 16 and done.HasField("dynamic_batching")


@pytest.mark.parametrize(
    ("text", "batching", "alone"),
    [
        (
            "max_batch_size: 8 dynamic_batching {}",
            "dynamic_batching",
            "remove dynamic_batching (each request then runs alone, its own rows together)",
        ),
        (
            "max_batch_size: 2 sequence_batching {}",
            "sequence_batching",
            "set max_batch_size: 1 (one sequence a batch)",
        ),
    ],
)
def test_a_config_batching_requests_together_is_refused_naming_the_output_and_the_op(
    text: str, batching: str, alone: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        _complete(text)
    assert str(caught.value) == (
        f"cfg: ONNX output 'y' mixes the rows of a batch ({WHY}): with {batching}, a request's answer "
        f"would depend on the requests batched with it; {alone}, or set max_batch_size: 0; if the rows "
        "are in fact independent, set parameters 'rows_independent' to 'true'"
    )


@pytest.mark.parametrize(
    "text",
    [
        "max_batch_size: 8",  # no dynamic batching: each request runs alone
        "max_batch_size: 1 dynamic_batching {}",  # a batch of one row holds one request
        "max_batch_size: 8 dynamic_batching {}\n" + VOUCHED,
        # Only z is served: y's rows are never answered.
        'max_batch_size: 8 dynamic_batching {} input [ { name: "x" data_type: TYPE_FP32 dims: [ 3 ] } ] '
        'output [ { name: "z" data_type: TYPE_FP32 dims: [ 3 ] } ]',
    ],
)
def test_a_config_that_never_mixes_requests_rows_is_completed(text: str) -> None:
    assert _complete(text).max_batch_size > 0


def test_a_ragged_config_without_batch_inputs_is_refused() -> None:
    # Its first dim is every request's elements in a row, and the model is not told where each
    # request's start: a Softmax over it spreads one request's values over another's.
    inputs = [OnnxTensor("x", "tensor(float)", ["T"])]
    outputs = [OnnxTensor("y", "tensor(float)", ["T"], mixes_rows=WHY)]
    text = (
        'max_batch_size: 8 dynamic_batching {} input [ { name: "x" data_type: TYPE_FP32 dims: [ -1 ] '
        "allow_ragged_batch: true } ]"
    )
    config = text_format.Parse(text, mc.ModelConfig())
    with pytest.raises(ConfigError, match="ONNX output 'y' mixes the rows of a batch"):
        complete_from_onnx(config, inputs, outputs, source="cfg")


def test_a_config_with_batch_inputs_is_completed() -> None:
    # The model is told each request's share of the batch (here its element count).
    inputs = [*INPUTS, OnnxTensor("sizes", "tensor(float)", ["N", 1])]
    text = (
        "max_batch_size: 8 dynamic_batching {} batch_input [ { kind: BATCH_ELEMENT_COUNT "
        'target_name: "sizes" data_type: TYPE_FP32 source_input: "x" } ]'
    )
    config = text_format.Parse(text, mc.ModelConfig())
    assert complete_from_onnx(config, inputs, OUTPUTS, source="cfg").max_batch_size == 8


def test_dynamic_batching_with_nothing_else_says_the_output_mixes_rows() -> None:
    with pytest.raises(ConfigError) as caught:
        _complete("dynamic_batching {}")
    assert str(caught.value) == (
        "cfg: dynamic_batching needs max_batch_size > 0 (the config's is 0 or unset, and the ONNX model's "
        f"output 'y' mixes the rows of a batch: {WHY}); set max_batch_size or remove dynamic_batching"
    )


def _refusal(config: mc.ModelConfig, outputs: list[OnnxTensor]) -> str:
    with pytest.raises(ConfigError) as caught:
        complete_from_onnx(config, INPUTS, outputs, source="cfg")
    return str(caught.value)


def test_dynamic_batching_without_max_batch_size_in_a_config_listing_inputs_says_so() -> None:
    # The graph batches, but a config that lists inputs is not completed (it had said the graph
    # has no variable first dimension, which was not so).
    config = text_format.Parse(
        'dynamic_batching {} input [ { name: "x" data_type: TYPE_FP32 dims: [ -1, 3 ] } ]', mc.ModelConfig()
    )
    plain = [OnnxTensor("y", "tensor(float)", ["N", 3])]
    assert _refusal(config, plain) == (
        "cfg: dynamic_batching needs max_batch_size > 0 (the config's is 0 or unset, and a config that "
        "lists inputs is not completed with one); set max_batch_size or remove dynamic_batching"
    )


def test_a_sequence_of_maps_output_is_refused_for_its_type_not_its_shape() -> None:
    # skl2onnx's ZipMap output: the load had said "has shape [] with no variable first (batch)
    # dimension", which sent the user to the wrong fix (a tester, session 50).
    zipmap = [OnnxTensor("probabilities", "seq(map(int64,tensor(float)))", [])]
    assert _refusal(text_format.Parse("max_batch_size: 8", mc.ModelConfig()), zipmap) == (
        "cfg: ONNX tensor 'probabilities' has unsupported type seq(map(int64,tensor(float))) (only "
        "tensors are served: export tensors, e.g. skl2onnx's options {'zipmap': False})"
    )


def test_rows_independent_must_be_a_boolean() -> None:
    with pytest.raises(ConfigError) as caught:
        _complete('parameters { key: "rows_independent" value: { string_value: "maybe" } }')
    assert str(caught.value) == "cfg: parameters 'rows_independent' must be 'true' or 'false', got 'maybe'"


def _source(path: Path, text: str) -> ModelSource:
    config = text_format.Parse(text, mc.ModelConfig())
    return ModelSource("softmax", path.parent.parent, config, {1: path}, "softmax/config.pbtxt")


def _centred_by_overridable(path: Path) -> Path:
    """y = x - mean(n over the batch), n [N, 1] an overridable initializer ([[2]] unless sent)."""
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["n"], ["mean"], axes=[0]),
            helper.make_node("Sub", ["x", "mean"], ["y"]),
        ],
        "centred",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1]),
            helper.make_tensor_value_info("n", TensorProto.FLOAT, ["N", 1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        [numpy_helper.from_array(np.array([[2.0]], np.float32), "n")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_an_overridable_initializer_clients_may_send_is_read_as_the_batchs(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    path = _centred_by_overridable(tmp_path / "1" / "model.onnx")
    batched = "max_batch_size: 4 dynamic_batching {}\n"
    completed, _, outputs, _ = complete_version(_source(path, batched), path, 8)
    assert completed.max_batch_size == 4 and outputs[0].mixes_rows is None  # n is the model's constant
    fed = batched + 'input [ { name: "n" data_type: TYPE_FP32 dims: [ 1 ] optional: true } ]'
    with pytest.raises(ConfigError, match="ONNX output 'y' mixes the rows of a batch"):
        complete_version(_source(path, fed), path, 8)


def test_a_version_is_read_and_refused_from_its_file(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    path = softmax_rows(tmp_path / "1" / "model.onnx")
    completed, _, outputs, _ = complete_version(_source(path, ""), path, 8)
    assert completed.max_batch_size == 0 and outputs[0].mixes_rows == WHY
    with pytest.raises(ConfigError, match="ONNX output 'y' mixes the rows of a batch"):
        complete_version(_source(path, "max_batch_size: 4 dynamic_batching {}"), path, 8)
    per_row = softmax_rows(tmp_path / "1" / "per_row.onnx", axis=1)
    completed, _, outputs, _ = complete_version(_source(per_row, ""), per_row, 8)
    assert completed.max_batch_size == 8 and outputs[0].mixes_rows is None
