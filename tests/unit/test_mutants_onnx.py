"""Graph inspection (server/backends/onnx_inspect.py) and config completion from the graph
(server/models/onnx_completion.py): the cases mutation testing found untested (tests/MUTANTS.md,
"Run of 2026-12-01 (eleventh session)"). Models are built with onnx's helpers in tmp_path."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from protos import model_config_pb2 as mc
from server.backends import onnx_inspect
from server.backends.onnx_inspect import OnnxSignature, inspect_onnx, overridable_initializers, read_signature
from server.backends.onnxruntime_backend import BackendLoadError
from server.models.config import parse_config
from server.models.config_errors import ConfigError
from server.models.onnx_completion import OnnxTensor, _dims, _is_batch_dim, complete_from_onnx

SOURCE = "models/m/config.pbtxt"
BATCHING_IN = [OnnxTensor("x", "tensor(float)", ["n", 4])]
BATCHING_OUT = [OnnxTensor("y", "tensor(float)", ["n", 2])]


def add_model(path: Path, ir_version: int, *, listed_as_input: bool = True) -> Path:
    """y = x + b, with initializer `b` (shape [3]) also a graph input when `listed_as_input`."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])
    init = numpy_helper.from_array(np.ones(3, np.float32), "b")
    inputs = [x, b] if listed_as_input else [x]
    graph = helper.make_graph([helper.make_node("Add", ["x", "b"], ["y"])], "g", inputs, [y], [init])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = ir_version
    onnx.save(model, str(path))
    return path


# --- onnx_inspect -----------------------------------------------------------------------------------


@pytest.mark.parametrize("ir_version", [4, 8])
def test_an_initializer_listed_as_an_input_is_overridable_from_ir_4(tmp_path: Path, ir_version: int) -> None:
    path = add_model(tmp_path / "m.onnx", ir_version)
    assert overridable_initializers(path) == [OnnxTensor("b", "tensor(float)", [3], default=(3,))]
    inputs, _ = inspect_onnx(path)
    assert [t.name for t in inputs] == ["x"]  # not a required input


def test_before_ir_4_no_initializer_is_overridable(tmp_path: Path) -> None:
    assert overridable_initializers(add_model(tmp_path / "m.onnx", 3)) == []


def test_an_initializer_not_listed_as_an_input_is_not_overridable(tmp_path: Path) -> None:
    assert overridable_initializers(add_model(tmp_path / "m.onnx", 8, listed_as_input=False)) == []


def test_a_file_that_is_no_model_is_named_by_both(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"\xff\x00 not a protobuf")
    for inspect in (inspect_onnx, overridable_initializers, read_signature):
        with pytest.raises(BackendLoadError, match=rf"^{path}: not a readable ONNX model: "):
            inspect(path)


@pytest.mark.parametrize("ir_version", [3, 8])
def test_one_parse_reads_what_the_two_inspections_read(
    tmp_path: Path, ir_version: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Completion parses each version's file once (~70 ms for the 47 MB demo resnet), not twice.
    path = add_model(tmp_path / "m.onnx", ir_version)
    expected = OnnxSignature(*inspect_onnx(path), overridable_initializers(path))
    parses: list[str] = []
    load = onnx.load
    monkeypatch.setattr(onnx_inspect.onnx, "load", lambda f, **kw: parses.append(f) or load(f, **kw))
    assert read_signature(path) == expected
    assert parses == [str(path)]


def test_external_weights_are_not_read_to_inspect(tmp_path: Path) -> None:
    # Completion runs before any session: a model whose weights live in another file is inspected
    # without them (here the file is gone, which a load of the weights would fail on).
    path = add_model(tmp_path / "m.onnx", 8)
    model = onnx.load(str(path))
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)  # fmt: skip
    (tmp_path / "weights.bin").unlink()
    assert [t.name for t in inspect_onnx(path)[0]] == ["x"]
    assert [t.name for t in overridable_initializers(path)] == ["b"]
    assert [t.name for t in read_signature(path).overridable] == ["b"]


def test_a_non_tensor_input_is_reported_by_its_kind(tmp_path: Path) -> None:
    seq = helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, None)
    y = helper.make_tensor_value_info("y", TensorProto.INT64, [])
    graph = helper.make_graph([helper.make_node("SequenceLength", ["s"], ["y"])], "g", [seq], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "m.onnx"))
    (tensor,), _ = inspect_onnx(tmp_path / "m.onnx")
    assert tensor.type == "seq(tensor(float))"  # onnxruntime's spelling (it had read "sequence_type")
    with pytest.raises(ConfigError, match=r"ONNX tensor 's' has unsupported type seq\(tensor\(float\)\)"):
        complete_from_onnx(mc.ModelConfig(), [tensor], [OnnxTensor("y", "tensor(int64)", [])])


# --- onnx_completion: the shapes ---------------------------------------------------------------------


def test_a_zero_sized_graph_dim_is_kept_and_only_a_variable_first_dim_batches() -> None:
    assert _dims(["n", 0, 5, None, -1]) == [-1, 0, 5, -1, -1]
    assert _is_batch_dim(["n"]) and _is_batch_dim([None, 3]) and _is_batch_dim([-1])
    assert not _is_batch_dim([0, 3]) and not _is_batch_dim([1]) and not _is_batch_dim([])


def test_a_scalar_graph_tensor_cannot_batch() -> None:
    scalar = [OnnxTensor("x", "tensor(float)", [])]
    assert complete_from_onnx(mc.ModelConfig(), scalar, BATCHING_OUT).max_batch_size == 0
    with pytest.raises(ConfigError, match=r"ONNX input 'x' has shape \[\] with no variable first"):
        complete_from_onnx(mc.ModelConfig(max_batch_size=4), scalar, BATCHING_OUT)


def test_node_arg_like_tensors_keep_their_names() -> None:
    args = [SimpleNamespace(name="x", type="tensor(float)", shape=["n", 4])]
    done = complete_from_onnx(mc.ModelConfig(), args, BATCHING_OUT)
    assert [(t.name, list(t.dims)) for t in done.input] == [("x", [4])]


def test_a_listed_input_without_dims_takes_the_graphs() -> None:
    config = parse_config('max_batch_size: 4 input [{ name: "x" data_type: TYPE_FP32 }]', SOURCE)
    assert list(complete_from_onnx(config, BATCHING_IN, BATCHING_OUT).input[0].dims) == [4]


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ('max_batch_size: 4 input [{ name: "x" dims: [ 5 ] }]', "dims (without the batch dimension)"),
        ('max_batch_size: 1 input [{ name: "x" dims: [ 5 ] }]', "dims (without the batch dimension)"),
        ('input [{ name: "x" dims: [ 2, 5 ] }]', "dims"),
    ],
)
def test_a_dims_mismatch_says_whether_the_batch_dimension_is_left_out(text: str, what: str) -> None:
    with pytest.raises(ConfigError) as caught:
        complete_from_onnx(parse_config(text, SOURCE), BATCHING_IN, BATCHING_OUT, source=SOURCE)
    got = str(caught.value)
    assert got.startswith(f"{SOURCE}: input 'x' {what} [") and "do not match the ONNX model's" in got


def test_control_inputs_alone_are_hidden_from_the_completed_inputs() -> None:
    text = """
        max_batch_size: 4
        sequence_batching {
          control_input [{ name: "START" control [{ kind: CONTROL_SEQUENCE_START fp32_false_true: [0, 1] }] }]
        }"""
    graph_in = [*BATCHING_IN, OnnxTensor("START", "tensor(float)", ["n", 1])]
    done = complete_from_onnx(parse_config(text, SOURCE), graph_in, BATCHING_OUT)
    assert [t.name for t in done.input] == ["x"]


# --- onnx_completion: every refusal names the file it is about ------------------------------------


FIXED_IN = [OnnxTensor("x", "tensor(float)", [3, 4])]
FIXED_OUT = [OnnxTensor("y", "tensor(float)", [3, 2])]
ODD_OUT = [OnnxTensor("y", "tensor(complex64)", ["n", 2])]


@pytest.mark.parametrize(
    ("text", "graph_in", "graph_out", "after"),
    [
        ('platform: "tensorflow_savedmodel"', BATCHING_IN, BATCHING_OUT, "platform 'tensorflow_savedmodel'"),
        (
            'max_batch_size: 4 input [{ name: "x" dims: [ 4 ] allow_ragged_batch: true }]',
            [OnnxTensor("x", "tensor(float)", ["n", 4])],
            BATCHING_OUT,
            "input 'x' has allow_ragged_batch",
        ),
        ('input [{ name: "x" optional: true }]', BATCHING_IN, BATCHING_OUT, "input 'x' is optional"),
        (
            'input [{ name: "x" }]',
            [OnnxTensor("x", "tensor(complex64)", [2])],
            FIXED_OUT,
            "ONNX tensor 'x' has unsupported type",
        ),
        (
            'max_batch_size: 4 input [{ name: "x" }]',
            FIXED_IN,
            BATCHING_OUT,
            "max_batch_size is 4 but ONNX input 'x'",
        ),
        ("max_batch_size: 4", BATCHING_IN, FIXED_OUT, "max_batch_size is 4 but ONNX output 'y'"),
        ("", BATCHING_IN, ODD_OUT, "ONNX tensor 'y' has unsupported type tensor(complex64)"),
        (
            "dynamic_batching { }",
            FIXED_IN,
            FIXED_OUT,
            "dynamic_batching needs max_batch_size > 0 (the config's is 0 or unset, and the ONNX model does "
            "not have a variable first (batch) dimension on every input and output); set max_batch_size or "
            "remove dynamic_batching",
        ),
    ],
)
def test_a_refusal_names_its_source(
    text: str, graph_in: list[OnnxTensor], graph_out: list[OnnxTensor], after: str
) -> None:
    config = parse_config(text, SOURCE)
    with pytest.raises(ConfigError) as caught:
        complete_from_onnx(config, graph_in, graph_out, source=SOURCE)
    assert str(caught.value).startswith(f"{SOURCE}: {after}")
    with pytest.raises(ConfigError) as caught:
        complete_from_onnx(config, graph_in, graph_out)
    assert str(caught.value).startswith(f"config: {after}")  # the default source
