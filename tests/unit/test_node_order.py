"""A graph's nodes put in an order where each comes after the nodes making what it reads
(server/backends/node_order.py): onnxruntime sorts and runs a graph listed out of order, and the
row-mixing reading, walking it as listed, had read x / Size(Loop(ReduceMax(x))) with the ReduceMax
listed last as taking nothing from x: it loaded batched (a tester, session 62)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from server.backends.node_order import ordered, sort_nodes
from server.backends.onnx_data_sized import data_sized_outputs
from server.backends.onnx_row_mixing import row_mixing_outputs
from tests.support.onnx_graphs import ONCE, carried_once

N = helper.make_node
F = TensorProto.FLOAT


def _outputs(nodes: list[onnx.NodeProto]) -> list[str]:
    return [node.output[0] for node in nodes]


def test_each_node_comes_after_what_it_reads_and_otherwise_as_listed() -> None:
    graph = helper.make_graph(
        [N("Neg", ["b"], ["c"]), N("Relu", ["x"], ["a"]), N("Abs", ["a"], ["b"]), N("Exp", ["x"], ["d"])],
        "g",
        [],
        [],
    )
    assert _outputs(ordered(graph)) == ["a", "b", "c", "d"]
    in_order = helper.make_graph(
        [N("Relu", ["x"], ["a"]), N("Exp", ["x"], ["d"]), N("Abs", ["a"], ["b"])], "g", [], []
    )
    assert _outputs(ordered(in_order)) == ["a", "d", "b"]  # already in order: as listed


def test_a_body_reading_a_later_tensor_comes_after_it() -> None:
    branch = helper.make_graph(
        [N("Identity", ["a"], ["t"])], "then", [], [helper.make_tensor_value_info("t", F, None)]
    )
    graph = helper.make_graph(
        [N("If", ["yes"], ["y"], then_branch=branch, else_branch=branch), N("Relu", ["x"], ["a"])],
        "g",
        [],
        [],
    )
    assert _outputs(ordered(graph)) == ["a", "y"]


def test_a_cycle_is_left_as_listed() -> None:
    graph = helper.make_graph([N("Neg", ["b"], ["a"]), N("Abs", ["a"], ["b"])], "g", [], [])
    assert _outputs(ordered(graph)) == ["a", "b"]
    sort_nodes(graph)
    assert _outputs(list(graph.node)) == ["a", "b"]


def _unsorted_size_of_loop() -> onnx.ModelProto:
    nodes = [
        carried_once("x1"),
        N("Size", ["lo"], ["size"]),
        N("Cast", ["size"], ["sized"], to=F),
        N("Div", ["x", "sized"], ["y"]),
        N("ReduceMax", ["x"], ["x1"], axes=[1], keepdims=1),  # listed last, run first
    ]
    inits = ONCE
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", F, ["N", 3])],
        [helper.make_tensor_value_info("y", F, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def test_a_graph_listed_out_of_order_is_read_as_it_runs() -> None:
    model = _unsorted_size_of_loop()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.ones((4, 3), np.float32)
    assert session.run(None, {"x": x})[0][0, 0] == 0.25  # x / 4 batched, x / 1 alone
    assert "takes the batch's size as a value" in row_mixing_outputs(model)["y"]
    assert [node.op_type for node in model.graph.node][-1] == "ReduceMax"  # the model itself untouched


def test_data_sized_outputs_are_read_as_the_graph_runs() -> None:
    # y = Identity(nz), listed before nz = NonZero(x): its first dim is the data's, not the batch's.
    nodes = [N("Identity", ["nz"], ["y"]), N("NonZero", ["x"], ["nz"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", F, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    assert "y" in data_sized_outputs(model)
