"""Mutants of session 50's row-mixing reading that its runs left alive (tests/MUTANTS.md, fiftieth
and fifty-first sessions): a fold's Slice axes, a fold given an unknown value, a Softmax or a
LayerNormalization over a one-axis input before opset 13, a DFT's two-input form, opset 10's Slice
inputs, a Constant's int list, a computed Slice's note, broadcasts of three inputs, an input that
names the batch twice."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from server.backends.onnx_constant_fold import folded
from server.backends.onnx_row_mixing import COMPUTED_SLICE, row_mixing_outputs
from tests.support.onnx_graphs import graph_model
from tests.support.onnx_graphs import ints as _ints

F = TensorProto.FLOAT


def _model(
    nodes: Sequence[onnx.NodeProto],
    inits: Sequence[onnx.TensorProto] = (),
    opset: int = 17,
    inputs: Sequence[onnx.ValueInfoProto] = (),
    shape: Sequence[int | str | None] = (None, 3),
) -> onnx.ModelProto:
    return graph_model(nodes, inits, opset=opset, inputs=inputs, shape=shape)


def test_a_folded_slice_reads_its_axes_with_or_without_steps() -> None:
    data = np.arange(6).reshape(2, 3)
    node = helper.make_node("Slice", ["d", "s", "e", "a"], ["o"])
    got = folded(node, [data, np.array([1]), np.array([3]), np.array([1])])
    assert got is not None and got.tolist() == [[1, 2], [4, 5]]
    stepped = helper.make_node("Slice", ["d", "s", "e", "a", "p"], ["o"])
    got = folded(stepped, [data, np.array([0]), np.array([3]), np.array([1]), np.array([2])])
    assert got is not None and got.tolist() == [[0, 2], [3, 5]]


def test_a_fold_with_an_unknown_value_is_not_made() -> None:
    node = helper.make_node("Concat", ["a", "b"], ["o"], axis=0)
    assert folded(node, [None, np.array([1])]) is None
    assert folded(node, [np.array([2]), np.array([1])]).tolist() == [2, 1]  # type: ignore[union-attr]


def test_a_softmax_or_layer_norm_over_a_one_axis_batch_mixes() -> None:
    one_axis = (None,)
    old = helper.make_node("Softmax", ["x"], ["y"], axis=-1)  # opset 11: axis -1 of [N] is the batch
    assert row_mixing_outputs(_model([old], opset=11, shape=one_axis))
    norm = helper.make_node("LayerNormalization", ["x", "scale"], ["y"])
    scale = numpy_helper.from_array(np.ones(1, np.float32), "scale")
    assert row_mixing_outputs(_model([norm], [scale], shape=one_axis))


def test_a_dft_of_two_inputs_works_along_its_default_axis() -> None:
    dft = helper.make_node("DFT", ["x", "length"], ["y"])  # opset 20: axis -2 unless given
    model = _model([dft], [_ints("length", 1)], opset=20, shape=(None, 1))
    assert "DFT" in row_mixing_outputs(model)["y"]


def test_a_slice_at_opset_10_reads_axes_and_steps_from_its_inputs() -> None:
    columns = helper.make_node("Slice", ["x", "s", "e", "a"], ["y"])
    inits = [_ints("s", [0]), _ints("e", [2]), _ints("a", [1])]
    assert row_mixing_outputs(_model([columns], inits, opset=10)) == {}  # x[:, :2]
    flip = helper.make_node("Slice", ["x", "s", "e", "a", "p"], ["y"])
    inits = [_ints("s", [-1]), _ints("e", [-(2**31)]), _ints("a", [0]), _ints("p", [-1])]
    assert row_mixing_outputs(_model([flip], inits, opset=10))  # x.flip(0)


def test_an_int_list_constant_is_read_as_axes() -> None:
    axes = helper.make_node("Constant", [], ["axes"], value_ints=[0])
    total = helper.make_node("ReduceSum", ["x", "axes"], ["t"])
    model = _model([axes, total, helper.make_node("Sub", ["x", "t"], ["y"])], opset=13)
    assert "ReduceSum" in row_mixing_outputs(model)["y"]


def test_a_slice_whose_starts_alone_are_computed_says_so() -> None:
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Slice", ["s", "zero", "one"], ["n"]),
        helper.make_node("Sub", ["n", "one"], ["start"]),
        helper.make_node("Slice", ["x", "start", "end", "zero"], ["y"]),
    ]
    inits = [_ints("zero", [0]), _ints("one", [1]), _ints("end", [2**62])]
    assert row_mixing_outputs(_model(nodes, inits))["y"].endswith(COMPUTED_SLICE)


def test_a_broadcast_of_three_inputs_pairs_rows() -> None:
    nodes = [
        helper.make_node("Unsqueeze", ["x", "two"], ["a"]),  # [N, 3, 1] -> rank 3, batch at 0
        helper.make_node("Unsqueeze", ["x", "zero"], ["b"]),  # [1, N, 3]: batch at 1
        helper.make_node("Sum", ["a", "b", "x"], ["y"]),
    ]
    got = row_mixing_outputs(_model(nodes, [_ints("two", [2]), _ints("zero", [0])], shape=(None, 1)))
    assert "pairs each row of the batch with every other" in got["y"]


def test_an_input_naming_the_batch_twice_is_not_a_pair() -> None:
    square = helper.make_tensor_value_info("x", F, ["N", "N"])
    bias = numpy_helper.from_array(np.ones(1, np.float32), "bias")
    model = _model([helper.make_node("Add", ["x", "bias"], ["y"])], [bias], inputs=[square])
    assert row_mixing_outputs(model) == {}
