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


def test_stored_sizes_are_kept() -> None:
    # A stored fixed dim is a fact the inference may not find again (here it could): it stays.
    model = _saved(SOFTMAX, _weights("w1"), None)
    model.graph.value_info[0].type.tensor_type.shape.dim[1].dim_value = 8
    assert "y" in row_mixing_outputs(model)
