"""Shape arithmetic on lengths the model fixes, computed at load (onnx_fixed_lengths.py; session 67):
HF transformers' Swin at a fixed image size pads its grid by (ws - H % ws) % ws and expands its
shifted windows' mask by (N * nW) // nW; onnx's inference lost the lengths at the Pad and the load
refused it for dynamic batching, each image its own (at 3897be1). The batch's size, a name, is never
computed: a value made from it is still read as such."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from server.backends.onnx_fixed_lengths import MAX_ROUNDS, fold_fixed_lengths, with_fixed_lengths
from server.backends.onnx_mixing_graph import value_dims
from server.backends.onnx_output_shapes import inferred_shapes
from server.backends.onnx_row_mixing import row_mixing_outputs
from tests.support.onnx_graphs import F, graph_model, ints, node, rows_independent
from tests.support.window_graphs import WS, C, padding, size, window_block


def test_a_shifted_windows_mask_expanded_per_image_at_a_fixed_size_batches() -> None:
    model = window_block()
    assert rows_independent(model, (8, 8, C))
    assert row_mixing_outputs(model) == {}  # refused at 3897be1: "takes the batch's size as a value"


def test_a_mask_expanded_by_a_fixed_count_is_still_refused() -> None:
    """The mask's copies a fixed 2 ([2, 4, 1, 16, 16] viewed as [8, 1, 16, 16]): added to the
    windows' [N*4, ...], it runs at a batch of 2 alone; the load does not read 2 as the batch's."""
    model = window_block(first="n_of")
    assert "y" in row_mixing_outputs(model)


def test_the_batchs_size_met_with_fixed_lengths_is_still_its_size() -> None:
    """x / ((N * 8) // 8): N, made from the batch's size and the fixed 8, is not computed: refused."""
    nodes = [
        *size("x", 0, "n"),
        *size("x", 1, "l"),
        node("Mul", ["n", "l"], "nl"),
        node("Div", ["nl", "l"], "k"),
        node("Cast", ["k"], "kf", to=F),
        node("Div", ["x", "kf"], "y"),
    ]
    model = graph_model(nodes, [ints("at0", 0), ints("at1", 1), ints("zero1", [0])], shape=("N", 8))
    assert "takes the batch's size as a value" in row_mixing_outputs(model)["y"]


def _inferred(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], shape: tuple) -> onnx.ModelProto:
    return inferred_shapes(graph_model(nodes, inits, shape=shape))


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {
        n.output[0]: numpy_helper.to_array(n.attribute[0].t)
        for n in model.graph.node
        if n.op_type == "Constant" and n.attribute[0].name == "value"
    }


def test_a_fixed_lengths_arithmetic_is_folded_and_the_batchs_left_as_it_is() -> None:
    nodes = [
        node("Shape", ["x"], "s"),
        node("Gather", ["s", "at1"], "h"),  # 8
        node("Gather", ["s", "last"], "w"),  # -1: 6
        node("Gather", ["s", "at0"], "n"),  # the batch's: a name
        node("Gather", ["s", "both"], "hw"),  # [8, 6]
        node("Gather", ["s", "with_n"], "nh"),  # [N, 8]: not all numbers
        node("Shape", ["x"], "tail", start=1),  # [8, 6]
        node("Size", ["x"], "count"),  # N * 48
        helper.make_node("Div", ["h", "two"], ["half"], name="halved"),  # 4
        node("Mul", ["half", "w"], "area"),  # 24
        node("Cast", ["area"], "area_f", to=F),  # a float: its value kept, the node too
        node("Add", ["n", "h"], "n8"),  # made from the batch's size
        node("Mul", ["x", "area_f"], "y"),
    ]
    inits = [ints("at0", 0), ints("at1", 1), ints("last", -1), ints("two", 2)]
    inits += [ints("both", [1, 2]), ints("with_n", [0, 1])]
    model = _inferred(nodes, inits, ("N", 8, 6))
    assert fold_fixed_lengths(model) == 6
    found = {name: value.tolist() for name, value in _constants(model).items()}
    assert found == {"h": 8, "w": 6, "hw": [8, 6], "tail": [8, 6], "half": 4, "area": 24}
    assert all(value.dtype == np.int64 for value in _constants(model).values())
    ops = {n.output[0]: n.op_type for n in model.graph.node}
    assert ops["area_f"] == "Cast" and ops["n"] == "Gather" and ops["nh"] == "Gather"
    assert ops["count"] == "Size" and ops["n8"] == "Add" and ops["y"] == "Mul"
    assert [n.output[0] for n in model.graph.node] == [n.output[0] for n in nodes]  # in place
    assert next(n for n in model.graph.node if n.output[0] == "half").name == "halved"
    assert fold_fixed_lengths(model) == 0  # nothing left to compute


def test_a_graph_output_a_body_and_a_large_value_are_left() -> None:
    body = helper.make_graph(
        [node("Shape", ["x"], "inner")],
        "b",
        [],
        [helper.make_tensor_value_info("inner", onnx.TensorProto.INT64, None)],
    )
    nodes = [
        node("Shape", ["x"], "s"),
        node("Gather", ["s", "at1"], "y"),  # the graph's output: kept as it is made
        helper.make_node("If", ["flag"], ["branch"], then_branch=body, else_branch=body),
        node("ConstantOfShape", ["big"], "wide"),  # 100 values: not kept
    ]
    inits = [ints("at1", 1), ints("big", [100]), numpy_helper.from_array(np.array(True), "flag")]
    model = _inferred(nodes, inits, ("N", 8))
    assert fold_fixed_lengths(model) == 0
    assert [n.op_type for n in model.graph.node] == ["Shape", "Gather", "If", "ConstantOfShape"]


def test_the_lengths_a_computed_pad_loses_are_inferred_again() -> None:
    """x [N, 8, 8, C] padded by computed pads: onnx's inference names every axis anew (the batch's
    too); folded and inferred again, the Pad's output is [N, 8, 8, C]."""
    inits = [
        *(ints(f"at{a}", a) for a in range(3)),
        ints("zero1", [0]),
        ints("ws1", [WS]),
        ints("zeros5", [0] * 5),
    ]
    model = _inferred(padding(), inits, ("N", 8, 8, C))
    dims = {v.name: value_dims(v) for v in model.graph.value_info}
    assert dims["p"] is not None and not any(isinstance(d, int) for d in dims["p"])  # (onnx's names)
    rounds: list[int] = []

    def infer(probe: onnx.ModelProto) -> onnx.ModelProto:
        rounds.append(len(probe.graph.value_info))
        return inferred_shapes(probe)

    model = with_fixed_lengths(model, infer)
    dims = {v.name: value_dims(v) for v in model.graph.value_info}
    assert dims["p"] == ["N", 8, 8, C]
    assert rounds == [0]  # inferred afresh once: the pads were all computed in one pass
    assert "pads" in _constants(model)


def test_the_rounds_are_bounded() -> None:
    calls: list[int] = []

    def infer(probe: onnx.ModelProto) -> onnx.ModelProto:
        calls.append(1)
        probe.graph.node.append(node("Shape", ["x"], f"again{len(calls)}"))  # a new fold each round
        return inferred_shapes(probe)

    model = _inferred([node("Shape", ["x"], "s"), node("Identity", ["x"], "y")], [], (2, 3))
    with_fixed_lengths(model, infer)
    assert len(calls) == MAX_ROUNDS


def test_constant_nodes_feed_the_folds_and_a_large_or_external_one_does_not() -> None:
    small = numpy_helper.from_array(np.array([2], np.int64), "k")
    wide = numpy_helper.from_array(np.arange(65, dtype=np.int64), "w")  # past MAX_ELEMENTS
    nodes = [
        helper.make_node("Constant", [], ["k"], value=small),
        helper.make_node("Constant", [], ["w"], value=wide),
        helper.make_node("Constant", [], ["three"], value_ints=[3]),
        node("Shape", ["x"], "s", start=1),
        node("Mul", ["s", "k"], "twice"),  # [16]: from a Constant node's value
        node("Add", ["s", "three"], "more"),  # [11]: from value_ints
        node("ReduceMax", ["w"], "top", keepdims=1),  # of 65 values: not folded
        node("Size", ["x"], "count"),  # N * 8: a name
        node("Mul", ["x", "x"], "y"),
    ]
    model = _inferred(nodes, [], ("N", 8))
    fold_fixed_lengths(model)
    found = {name: value.tolist() for name, value in _constants(model).items()}
    assert found["twice"] == [16] and found["more"] == [11]
    ops = {n.output[0]: n.op_type for n in model.graph.node}
    assert ops["top"] == "ReduceMax" and ops["count"] == "Size"
    fixed = _inferred([node("Size", ["x"], "count"), node("Identity", ["x"], "y")], [], (2, 3))
    assert fold_fixed_lengths(fixed) == 1 and _constants(fixed)["count"].tolist() == 6
    assert _constants(fixed)["count"].dtype == np.int64
