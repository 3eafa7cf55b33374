"""server/backends/graph_names.py: the names a graph holds at any depth, and the first prefix under
which a rewrite's added names clash with none of them (shared by the integer-division guard and
the per-row quantization: a clash there gave wrong answers silently, tests/MUTANTS.md, 48th session)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from server.backends.graph_names import free_prefix, graphs, taken_names

BASE = "rw"
ONE = numpy_helper.from_array(np.ones(1, np.float32))


def value(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [])


def body(made: str, name: str = "body") -> onnx.GraphProto:
    """A subgraph whose one node (named `name`) makes `made`."""
    return helper.make_graph(
        [helper.make_node("Constant", [], [made], name=f"{name}_k", value=ONE)],
        name,
        [],
        [value(made)],
    )


def test_graphs_walks_every_subgraph_at_any_depth_in_order() -> None:
    inner = body("inner_out", "inner")
    middle = helper.make_graph(
        [helper.make_node("If", ["c"], ["m"], then_branch=inner, else_branch=body("else_out", "else"))],
        "middle",
        [],
        [value("m")],
    )
    listed = helper.make_node("Custom", [], ["x"], domain="example")
    listed.attribute.append(helper.make_attribute("bodies", [body("a", "first"), body("b", "second")]))
    top = helper.make_graph(
        [helper.make_node("Loop", ["n", "c"], ["l"], body=middle), listed], "top", [], [value("l")]
    )
    # Depth first; make_node keeps an If's attributes sorted by name (else_branch, then_branch).
    assert [g.name for g in graphs(top)] == ["top", "middle", "else", "inner", "first", "second"]


@pytest.mark.parametrize("kind", ["input", "output", "value_info", "initializer", "node output", "node name"])
def test_each_kind_of_name_counts_as_taken(kind: str) -> None:
    graph = helper.make_graph([], "g", [], [])
    name = f"{BASE}/x"
    if kind == "input":
        graph.input.append(value(name))
    elif kind == "output":
        graph.output.append(value(name))
    elif kind == "value_info":
        graph.value_info.append(value(name))
    elif kind == "initializer":
        graph.initializer.append(numpy_helper.from_array(np.zeros(1, np.float32), name))
    elif kind == "node output":
        graph.node.append(helper.make_node("Identity", ["a"], [name], name="n"))
    else:
        graph.node.append(helper.make_node("Identity", ["a"], ["b"], name=name))
    assert name in taken_names(graph)
    assert free_prefix(graph, BASE) == f"{BASE}2/"


def test_names_inside_subgraphs_count_and_add_to_the_outer_ones() -> None:
    # The outer input takes rw/, the branch's constant rw2/ (the walk keeps both): rw3/ is free.
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["o"], then_branch=body(f"{BASE}2/k"), else_branch=body("z"))],
        "g",
        [value(f"{BASE}/in")],
        [value("o")],
    )
    assert {f"{BASE}/in", f"{BASE}2/k", "body_k", "o", "z"} <= taken_names(graph)
    assert free_prefix(graph, BASE) == f"{BASE}3/"


def test_only_names_that_begin_with_the_whole_prefix_take_it() -> None:
    # "rwx", "rw" and "a/rw/b" do not begin with "rw/"; nor does "rw2" alone take "rw2/".
    names = ["rwx", BASE, f"a/{BASE}/b", f"{BASE}2"]
    graph = helper.make_graph([], "g", [value(n) for n in names], [])
    assert free_prefix(graph, BASE) == f"{BASE}/"
    graph.input.append(value(f"{BASE}/taken"))
    assert free_prefix(graph, BASE) == f"{BASE}2/"


def test_an_untouched_graph_gets_the_base_itself() -> None:
    assert free_prefix(helper.make_graph([], "g", [], []), BASE) == f"{BASE}/"
    assert taken_names(helper.make_graph([], "g", [], [])) == set()
