"""Graph outputs as onnxruntime describes them where the graph's declaration says too little
(server/backends/onnx_output_shapes.py; a tester, session 49). Column sums declared `[?]` or with an
exporter's own symbol had completed as batched, and three coalesced one-row requests each got the
batch's sums, OK; an output declared with no shape was taken for a scalar, and every request
failed INTERNAL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from protos import model_config_pb2 as mc
from server.backends import onnx_output_shapes
from server.backends.onnx_inspect import inspect_onnx
from server.backends.onnxruntime_backend import BackendLoadError
from server.models.onnx_completion import complete_from_onnx
from tests.support.zoo_models import column_sums

Shape = list[int | str | None] | None


def _relu(path: Path, declared: Shape, x: list[int | str | None] | None = None, typed: bool = True) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x if x is not None else ["N", 4])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, declared)
            if typed
            else onnx.ValueInfoProto(name="y")
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _completed(path: Path) -> mc.ModelConfig:
    inputs, outputs = inspect_onnx(path)
    return complete_from_onnx(mc.ModelConfig(), inputs, outputs, default_max_batch_size=64)


@pytest.mark.parametrize("declared", [[None], ["unk__2"]])
def test_column_sums_declared_loosely_are_not_batched(
    tmp_path: Path, declared: list[int | str | None]
) -> None:
    path = column_sums(tmp_path / "sums.onnx", width=3, declared=declared)
    _, (y,) = inspect_onnx(path)
    assert list(y.shape) == [3]  # as onnxruntime reports it
    done = _completed(path)
    assert done.max_batch_size == 0 and list(done.output[0].dims) == [3]


def test_a_transpose_declared_loosely_keeps_the_batch_in_its_second_dim(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["x"], ["y"], perm=[1, 0])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "t.onnx")
    _, (y,) = inspect_onnx(tmp_path / "t.onnx")
    assert list(y.shape) == [3, "N"]
    assert _completed(tmp_path / "t.onnx").max_batch_size == 0


@pytest.mark.parametrize("typed", [True, False])
def test_an_output_declared_without_a_shape_gets_the_inferred_one(tmp_path: Path, typed: bool) -> None:
    _, (y,) = inspect_onnx(_relu(tmp_path / "r.onnx", None, typed=typed))
    assert (y.type, list(y.shape)) == ("tensor(float)", ["N", 4])
    done = _completed(tmp_path / "r.onnx")
    assert done.max_batch_size == 64 and list(done.output[0].dims) == [4]


def test_an_unnamed_batch_carried_through_stays_a_variable_first_dim(tmp_path: Path) -> None:
    _, (y,) = inspect_onnx(_relu(tmp_path / "r.onnx", [None, None], x=[None, 4]))
    assert list(y.shape) == ["__sluiceway_batch_0", 4]
    assert _completed(tmp_path / "r.onnx").max_batch_size == 64


def _counting_inference(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The graphs onnx's shape inference is run on from now on (by name), run for real."""
    runs: list[str] = []
    real = onnx.shape_inference.infer_shapes

    def counting(model: onnx.ModelProto, *args: object, **kwargs: object) -> onnx.ModelProto:
        runs.append(model.graph.name)
        return real(model, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(onnx_output_shapes.onnx.shape_inference, "infer_shapes", counting)
    return runs


def test_a_declaration_that_says_enough_is_read_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = _counting_inference(monkeypatch)
    for i, declared in enumerate((["N", 4], [2, None], [])):
        _, (y,) = inspect_onnx(_relu(tmp_path / f"r{i}.onnx", declared))
        assert list(y.shape) == declared  # the inputs' batch symbol, a fixed size, a scalar
    assert runs == []  # none was run: nothing to refine
    _, (y,) = inspect_onnx(_relu(tmp_path / "loose.onnx", [None, 4]))
    assert runs == ["g"] and list(y.shape) == ["N", 4]


def test_an_initializers_first_dim_is_no_batch_symbol(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An overridable initializer w ['K', 4] beside x ['N', 4]: an output declared ['K', 4] is unsure.
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [d, 4]) for n, d in (("x", "N"), ("w", "K"))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["K", 4])],
        initializer=[onnx.numpy_helper.from_array(np.zeros((1, 4), np.float32), "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "w.onnx")
    runs = _counting_inference(monkeypatch)
    inspect_onnx(tmp_path / "w.onnx")
    assert runs == ["g", "g"]  # the outputs refined, then the reading of ops that mix rows (an Add)


def test_a_sequence_output_is_left_to_completion_to_refuse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    graph = helper.make_graph(
        [helper.make_node("SequenceConstruct", ["x"], ["s"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, None)],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "s.onnx")
    runs = _counting_inference(monkeypatch)
    _, (s,) = inspect_onnx(tmp_path / "s.onnx")
    assert runs == [] and s.type == "seq(tensor(float))"


def test_a_shape_read_from_the_datas_shape_is_inferred_through_its_values(tmp_path: Path) -> None:
    # y = Reshape(x [N, 3], [3, N]): a fixed first dim only data propagation sees (Shape's values).
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["width"]),
        helper.make_node("Gather", ["shape", "zero"], ["rows"]),
        helper.make_node("Concat", ["width", "rows"], ["swapped"], axis=0),
        helper.make_node("Reshape", ["x", "swapped"], ["y"]),
    ]
    index = [onnx.numpy_helper.from_array(np.array([v], np.int64), n) for n, v in (("zero", 0), ("one", 1))]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None])],
        initializer=index,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "t.onnx")
    _, (y,) = inspect_onnx(tmp_path / "t.onnx")
    assert list(y.shape) == [3, "N"]


def test_a_declaration_of_another_rank_gives_way_and_fixed_dims_stay(tmp_path: Path) -> None:
    _, (y,) = inspect_onnx(_relu(tmp_path / "rank.onnx", [None], x=["N", 4, 5]))
    assert list(y.shape) == ["N", 4, 5]  # declared rank 1: the inferred rank 3 whole
    _, (y,) = inspect_onnx(_relu(tmp_path / "mixed.onnx", [None, 4, None], x=["N", 4, 5]))
    assert list(y.shape) == ["N", 4, 5]  # each unknown dim filled, past a declared fixed one


def test_an_exporters_own_symbol_inferred_as_the_batch_stays_its_own(tmp_path: Path) -> None:
    # tf2onnx's unk__ names: an inferred symbol fills an unknown dim only; a declared one stays.
    _, (y,) = inspect_onnx(_relu(tmp_path / "r.onnx", ["unk__2", None], x=["unk__1", 4]))
    assert list(y.shape) == ["unk__2", 4]


def test_where_inference_fails_the_declaration_stands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(*args: object, **kwargs: object) -> None:
        raise onnx.shape_inference.InferenceError("no")

    monkeypatch.setattr(onnx_output_shapes.onnx.shape_inference, "infer_shapes", failing)
    _, (y,) = inspect_onnx(_relu(tmp_path / "r.onnx", [None, 4]))
    assert list(y.shape) == [None, 4]


def test_an_output_of_no_shape_that_inference_cannot_tell_is_refused_naming_it(tmp_path: Path) -> None:
    node = helper.make_node("Mystery", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    )
    onnx.save(model, tmp_path / "m.onnx")
    with pytest.raises(BackendLoadError) as caught:
        inspect_onnx(tmp_path / "m.onnx")
    assert str(caught.value) == (
        "ONNX output 'y' has no shape, and onnx's shape inference finds none: declare its shape in the graph"
    )


def test_the_inferences_copy_gives_a_weight_as_an_input_of_its_type_without_its_values(
    tmp_path: Path,
) -> None:
    # The demo resnet's 47 MB of weights had been copied into each inference (most of its 0.2 s);
    # a bound of 4,096 elements a tensor had kept 12,000 weights of 64 x 64 (a tester, session 50).
    weight = onnx.numpy_helper.from_array(np.ones((8, 9), np.float32), "w")  # 72 elements
    small = onnx.numpy_helper.from_array(np.ones(64, np.float32), "small")  # the most kept
    listed = onnx.numpy_helper.from_array(np.ones(100, np.float32), "listed")  # also a graph input
    far = onnx.numpy_helper.from_array(np.ones(2, np.int64), "far")  # small, but stored apart
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8]),
            helper.make_tensor_value_info("listed", TensorProto.FLOAT, [100]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[weight, small, listed, far],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.external_data_helper.set_external_data(model.graph.initializer[3], "far.bin")
    model.graph.initializer[3].data_location = TensorProto.EXTERNAL
    model.graph.initializer[3].ClearField("raw_data")
    probe = onnx_output_shapes.inference_probe(model, {"y"})
    assert [init.name for init in probe.graph.initializer] == ["small"]
    inputs = {v.name: v.type.tensor_type for v in probe.graph.input}
    assert list(inputs) == ["x", "listed", "w", "far"]
    assert inputs["w"].elem_type == TensorProto.FLOAT and inputs["far"].elem_type == TensorProto.INT64
    assert [d.dim_value for d in inputs["w"].shape.dim] == [8, 9]
    assert inputs["x"].shape.dim[0].dim_param == onnx_output_shapes.BATCH_SYMBOL.format(0)
    assert len(model.graph.initializer) == 4  # the model itself is left as it was
    inferred = onnx.shape_inference.infer_shapes(probe)
    assert [d.dim_param or d.dim_value for d in inferred.graph.output[0].type.tensor_type.shape.dim] == [
        onnx_output_shapes.BATCH_SYMBOL.format(0),
        9,
    ]
