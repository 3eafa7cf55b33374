"""A model saved after onnx's shape inference holds its tensors' dims in value_info; with the batch
unnamed on its input, every tensor inside holds it as `unk__0`, or under an exporter's own names,
and onnx's inference keeps a stored name. The reading names the input's batch itself, so it read the
batch's axis inside under another name: x + Conv(Relu(Conv(x))) was refused as the batch against a
length the load cannot tell, and Softmax(x @ W, axis=0) loaded batched, each answer depending on
its batch mates, OK (a tester, session 61). A stored dim name other than an input's is set aside
before the inference (onnx_output_shapes._without_initializers); stored sizes are kept."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from server.backends.onnx_row_mixing import row_mixing_outputs
from tests.support.onnx_graphs import ONCE, once_round

F = TensorProto.FLOAT
N = helper.make_node


def _saved(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], stored: str | None) -> onnx.ModelProto:
    """x [?, 8] -> nodes -> y, saved with inferred shapes (stored=None: onnx's `unk__0`), or with
    each stored tensor's batch named `stored` + its name (an exporter's per-tensor names)."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", F, [None, 8])],
        [helper.make_tensor_value_info("y", F, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model)
    for value in model.graph.value_info:
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param == "unk__0"  # what the inference stored for the unnamed batch
        if stored is not None:
            dims[0].dim_param = f"{stored}_{value.name}_dim_0"
    return model


def _weights(*names: str) -> list[onnx.TensorProto]:
    rng = np.random.default_rng(0)
    return [numpy_helper.from_array((rng.standard_normal((8, 8)) * 0.3).astype(np.float32), n) for n in names]


RESIDUAL = [
    N("MatMul", ["x", "w1"], ["m1"]),
    N("Relu", ["m1"], ["r1"]),
    N("MatMul", ["r1", "w2"], ["m2"]),
    N("Add", ["x", "m2"], ["y"]),
]
SOFTMAX = [N("MatMul", ["x", "w1"], ["m1"]), N("Softmax", ["m1"], ["y"], axis=0)]


def _rows_differ(model: onnx.ModelProto) -> bool:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    requests = [np.random.default_rng(k).standard_normal((1, 8)).astype(np.float32) for k in range(4)]
    batched = session.run(None, {"x": np.concatenate(requests)})[0]
    return any(
        not np.allclose(session.run(None, {"x": r})[0], batched[i : i + 1]) for i, r in enumerate(requests)
    )


@pytest.mark.parametrize("stored", [None, "MatMul"], ids=["unk", "exporter_names"])
def test_a_residual_saved_with_its_inferred_shapes_batches(stored: str | None) -> None:
    model = _saved(RESIDUAL, _weights("w1", "w2"), stored)
    assert row_mixing_outputs(model) == {}  # refused at ec2b801: the batch against another length
    assert not _rows_differ(model)


@pytest.mark.parametrize("stored", [None, "MatMul"], ids=["unk", "exporter_names"])
def test_a_softmax_along_the_batch_saved_with_its_inferred_shapes_is_refused(stored: str | None) -> None:
    model = _saved(SOFTMAX, _weights("w1"), stored)
    assert row_mixing_outputs(model) == {
        "y": "the Softmax node making 'y' works along the batch's axis, axis 0 of 'm1' ['batch', 8]"
    }  # {} at 3a1cb79 and at ec2b801
    assert _rows_differ(model)


def test_a_stored_size_beside_the_batch_changes_nothing() -> None:
    # The main graph's stored shapes are left out of the inference, sizes too: the batch is read.
    model = _saved(SOFTMAX, _weights("w1"), None)
    model.graph.value_info[0].type.tensor_type.shape.dim[1].dim_value = 8
    assert "y" in row_mixing_outputs(model)


def _graph_model(
    nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], inits: list[onnx.TensorProto]
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", F, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _branch(name: str, op: str, declared: list[int | str | None] | None) -> onnx.GraphProto:
    out = helper.make_tensor_value_info(f"{name}_out", F, declared)
    return helper.make_graph([N(op, ["x"], [f"{name}_out"])], name, [], [out])


@pytest.mark.parametrize(
    "declared", [(["t_dim0", 8], ["e_dim0", 8]), (["d0", 8], ["d0", 8])], ids=["apart", "shared"]
)
def test_if_branches_declaring_their_own_batch_names_batch(
    declared: tuple[list[str | int], list[str | int]],
) -> None:
    # A second tester, session 61: onnx merged the branches' names into a new `unk__0`, read as
    # another length against x's batch.
    cond = numpy_helper.from_array(np.array(True), "cond")
    branches = {
        "then_branch": _branch("t", "Relu", declared[0]),
        "else_branch": _branch("e", "Sigmoid", declared[1]),
    }
    nodes = [N("If", ["cond"], ["picked"], **branches), N("Add", ["picked", "x"], ["y"])]
    model = _graph_model(nodes, [helper.make_tensor_value_info("x", F, ["batch", 8])], [cond])
    assert row_mixing_outputs(model) == {}
    assert not _rows_differ(model)


def test_an_if_saved_with_its_inferred_shapes_batches() -> None:
    cond = numpy_helper.from_array(np.array(True), "cond")
    then = helper.make_graph(
        [N("MatMul", ["x", "w1"], ["t_out"])], "t", [], [helper.make_tensor_value_info("t_out", F, None)]
    )
    other = _branch("e", "Identity", None)
    nodes = [
        N("If", ["cond"], ["picked"], then_branch=then, else_branch=other),
        N("Add", ["picked", "x"], ["y"]),
    ]
    model = _graph_model(nodes, [helper.make_tensor_value_info("x", F, [None, 8])], [cond, *_weights("w1")])
    model = onnx.shape_inference.infer_shapes(model)
    assert (
        model.graph.node[0]
        .attribute[0]
        .g.output[0]
        .type.tensor_type.shape.dim[0]
        .dim_param.startswith("unk__")
    )
    assert row_mixing_outputs(model) == {}
    assert not _rows_differ(model)


def test_a_sequences_elements_saved_with_their_inferred_shapes_batch() -> None:
    nodes = [
        N("SplitToSequence", ["x"], ["pieces"], axis=1, keepdims=0),
        N("SequenceAt", ["pieces", "first"], ["p0"]),
        N("SequenceAt", ["pieces", "last"], ["p1"]),
        N("Add", ["p0", "p1"], ["ends"]),
        N("Unsqueeze", ["ends", "one"], ["ends3"]),
        N("Add", ["x", "ends3"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.asarray(v, np.int64), n)
        for n, v in (("first", 0), ("last", -1), ("one", [1]))
    ]
    model = _graph_model(nodes, [helper.make_tensor_value_info("x", F, [None, 3, 8])], inits)
    model = onnx.shape_inference.infer_shapes(model)
    assert any(v.type.HasField("sequence_type") for v in model.graph.value_info)
    assert row_mixing_outputs(model) == {}


def _loop_carrying_x(stored: list[int | str | None] | None) -> onnx.ModelProto:
    """A Loop carrying x [N, 4] once round, then Softmax along axis 0; `stored`: the Loop's output's
    dims in value_info (None: not stored)."""
    body = once_round(N("Identity", ["c_in"], ["c_out"]))
    nodes = [N("Loop", ["once", "go", "x"], ["carried"], body=body), N("Softmax", ["carried"], ["y"], axis=0)]
    model = _graph_model(nodes, [helper.make_tensor_value_info("x", F, ["N", 4])], ONCE)
    if stored is not None:
        model.graph.value_info.append(helper.make_tensor_value_info("carried", F, stored))
    return model


@pytest.mark.parametrize(
    "stored", [None, ["B", 4], ["unk__0", 4], [None, 4]], ids=["none", "B", "unk", "unnamed"]
)
def test_a_softmax_along_a_loops_stored_output_is_refused(stored: list[int | str | None] | None) -> None:
    # Names set aside, a Loop's output is not inferred again: the stored name is given back (B: {} at
    # 4ad20bf), and a stored dim of no name is read as no shape, not as another axis ({} before).
    model = _loop_carrying_x(stored)
    assert "y" in row_mixing_outputs(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    requests = [np.random.default_rng(k).standard_normal((1, 4)).astype(np.float32) for k in range(4)]
    batched = session.run(None, {"x": np.concatenate(requests)})[0]
    assert not np.allclose(session.run(None, {"x": requests[1]})[0], batched[1:2])


def test_a_batch_one_export_made_dynamic_by_update_model_dims_reads_its_batch() -> None:
    # onnx's own tool rewrites only the inputs and outputs: the tensors inside keep their stored 1,
    # which read the batch's axis as a fixed 1 (a fifth tester, session 61: {} at 3a1cb79, wrong).
    from onnx.tools import update_model_dims

    graph = helper.make_graph(
        SOFTMAX,
        "g",
        [helper.make_tensor_value_info("x", F, [1, 8])],
        [helper.make_tensor_value_info("y", F, [1, 8])],
        _weights("w1"),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model)
    assert model.graph.value_info[0].type.tensor_type.shape.dim[0].dim_value == 1
    model = update_model_dims.update_inputs_outputs_dims(model, {"x": ["N", 8]}, {"y": ["N", 8]})
    assert row_mixing_outputs(model) == {
        "y": "the Softmax node making 'y' works along the batch's axis, axis 0 of 'm1' ['N', 8]"
    }
    assert _rows_differ(model)


def test_a_stored_shape_is_given_back_where_the_inference_gives_a_type_and_no_shape() -> None:
    # A Loop widening x to [N, 16]: onnx infers its output's type, no shape; its stored shape is the
    # walk's (a sixth tester, session 61: dropped at 57f4a7f, the Softmax after it refused).
    body = once_round(N("Concat", ["c_in", "c_in"], ["c_out"], axis=1))
    nodes = [N("Loop", ["once", "go", "x"], ["wide"], body=body), N("Softmax", ["wide"], ["y"], axis=-1)]
    model = _graph_model(nodes, [helper.make_tensor_value_info("x", F, ["N", 8])], ONCE)
    assert "its shape is not known" in row_mixing_outputs(model)["y"]
    model.graph.value_info.append(helper.make_tensor_value_info("wide", F, ["N", 16]))
    assert row_mixing_outputs(model) == {}
