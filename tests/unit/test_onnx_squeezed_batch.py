"""A Squeeze of no axes drops every axis of length 1, the batch's where a request runs alone
(onnx_grown_rows.squeezed_batch): torch's x.squeeze() on [N, 1, 8] answered (8,) alone and (4, 8)
batched, and had loaded batched (a tester, session 61)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from server.backends.onnx_row_mixing import row_mixing_outputs
from tests.support.onnx_graphs import ONCE, carried_once, once_round

F = TensorProto.FLOAT
N = helper.make_node


def _model(squeeze: onnx.NodeProto, opset: int) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.eye(8, dtype=np.float32), "w")
    axes = numpy_helper.from_array(np.array([1], np.int64), "one")
    graph = helper.make_graph(
        [N("MatMul", ["x", "w"], ["m"]), squeeze],
        "g",
        [helper.make_tensor_value_info("x", F, ["batch", 1, 8])],
        [helper.make_tensor_value_info("y", F, None)],
        [w, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("opset", [11, 17])
def test_a_squeeze_of_no_axes_on_the_batch_is_refused(opset: int) -> None:
    model = _model(N("Squeeze", ["m"], ["y"]), opset)
    assert row_mixing_outputs(model) == {
        "y": "the Squeeze node making 'y' squeezes every axis of length 1 of 'm' ['batch', 1, 8]: "
        "the batch's, axis 0, where a request runs alone"
    }  # {} at 3a1cb79
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.ones((1, 1, 8), np.float32)
    assert session.run(None, {"x": x})[0].shape == (8,)
    assert session.run(None, {"x": np.concatenate([x, x])})[0].shape == (2, 8)


def test_a_squeeze_of_named_axes_keeps_rows() -> None:
    assert row_mixing_outputs(_model(N("Squeeze", ["m", "one"], ["y"]), 17)) == {}
    assert row_mixing_outputs(_model(N("Squeeze", ["m"], ["y"], axes=[1]), 11)) == {}


def test_a_squeeze_of_no_axes_on_a_tensor_of_no_known_shape_is_refused() -> None:
    # x through a Loop that joins it to itself (its output of no shape in onnx's inference), then
    # squeezed: alone (16,).
    model = _model(N("Squeeze", ["carried"], ["y"]), 17)
    step = N("Concat", ["c_in", "c_in"], ["c_out"], axis=1)
    model.graph.node.insert(1, N("Loop", ["once", "go", "m"], ["carried"], body=once_round(step)))
    model.graph.initializer.extend(ONCE)
    assert row_mixing_outputs(model) == {
        "y": "the Squeeze node making 'y' squeezes every axis of length 1 of 'carried', of no known shape"
    }


def test_a_squeeze_of_no_axes_on_a_loops_output_that_keeps_its_shape_names_the_batch() -> None:
    # Loop(m) returns m as it took it: [batch, 1, 8] (session 65; read of no known shape before).
    model = _model(N("Squeeze", ["carried"], ["y"]), 17)
    model.graph.node.insert(1, carried_once("m", "carried"))
    model.graph.initializer.extend(ONCE)
    assert row_mixing_outputs(model) == {
        "y": "the Squeeze node making 'y' squeezes every axis of length 1 of 'carried' ['batch', 1, 8]: "
        "the batch's, axis 0, where a request runs alone"
    }


def test_a_squeeze_of_no_axes_of_a_small_weight_keeps_rows() -> None:
    # A small initializer has no dims in the reading's inference: its value's (a sixth tester,
    # session 61: refused at 57f4a7f, "of no known shape").
    weight = numpy_helper.from_array(np.ones((1, 8), np.float32), "bias")
    graph = helper.make_graph(
        [N("Squeeze", ["bias"], ["b"]), N("Add", ["x", "b"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", F, ["batch", 8])],
        [helper.make_tensor_value_info("y", F, None)],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    assert row_mixing_outputs(model) == {}
