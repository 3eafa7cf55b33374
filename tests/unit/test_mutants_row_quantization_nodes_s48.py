"""RowNodes (server/backends/row_quantization_nodes.py): what the whole-scope mutation run of
2026-12-05 left of it. Most survivors rename an added tensor under the rewrite's free prefix
(equivalent, tests/MUTANTS.md); these tests pin what is not a name.

The column sums of B: the rewrite computes (q - zp) . B as q . B - zp * colsum(B) in int32, which
wraps, so the identity holds modulo 2**32 and the answer is exact whenever the true product fits in
int32, even where q . B or colsum(B) alone does not. That needs the column sum itself wrapped into
int32 (an int64 sum cast down), not a float64 sum cast out of range (numpy gives INT_MIN, or
saturates on other machines): then zp * colsum is off by a multiple of zp that is not one of 2**32.
(Checked end to end once: a row of 8421506 values from -128 to 127 with zero point 128 gets exactly
255 * sum(x) from the rewritten graph in onnxruntime; the session took about a second, so the tests
stay with the sums.)

The names: the added tensors' names are only wiring, each under the rewrite's free prefix, so that
renaming one changes nothing as long as the prefix is free of every name the graph already has.
Graph inputs and subgraphs' tensors were not counted (fixed: row_quantization.py's `_names`): an
initializer the rewrite added under an input's name became that input's default, and the client's
value replaced it, silently; a name made again outside a subgraph broke SSA (served per batch).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from server.backends.graph_names import free_prefix
from server.backends.row_quantization import PREFIX, make_per_row
from server.backends.row_quantization_nodes import RowNodes
from tests.unit.test_mutants_row_quantization import M, quantized, rows

# The fewest rows of 255 whose column sum passes int32's largest value, 2**31 - 1.
LONG_K = 8_421_505


def _as_int32(value: int) -> int:
    """`value` wrapped into int32, as onnxruntime's int32 Mul and Sub wrap."""
    return (value + 2**31) % 2**32 - 2**31


def _colsum_of(weights: np.ndarray, zero: np.ndarray | None) -> np.ndarray:
    """The column sums int_matmul adds for B = `weights` (zero point `zero`): the initializer its
    Mul multiplies each row's zero point by."""
    graph = helper.make_graph([], "g", [], [])
    rows = RowNodes(graph, 17, "t/")
    b = numpy_helper.from_array(weights, "w")
    b_zero = None if zero is None else numpy_helper.from_array(zero, "wz")
    rows.int_matmul("q", b, b_zero, "zp32", "out")
    (mul,) = [n for n in rows.nodes if n.op_type == "Mul"]
    assert mul.input[0] == "zp32"
    (colsum,) = [t for t in graph.initializer if t.name == mul.input[1]]
    assert colsum.data_type == TensorProto.INT32
    return numpy_helper.to_array(colsum)


@pytest.mark.parametrize(
    ("weights", "zero"),
    [
        (np.full((LONG_K, 1), 255, np.uint8), None),
        # int8 weights less a zero point of -128: 255 a row through the subtraction
        (np.full((LONG_K, 1), 127, np.int8), np.array(-128, np.int8)),
    ],
    ids=["uint8", "int8_less_its_zero_point"],
)
def test_column_sums_past_int32_are_wrapped_as_the_int32_arithmetic_they_enter(
    weights: np.ndarray, zero: np.ndarray | None
) -> None:
    # 255 * K = 2147483775, 128 past 2**31 - 1: wrapped, -2147483521. A float64 sum (astype(None) on
    # B or on its zero point) cast to int32 is INT_MIN here instead, and every row's answer with a
    # non-zero zero point shifts by zp * 127.
    colsum = _colsum_of(weights, zero)
    assert colsum.dtype == np.int32
    assert colsum.tolist() == [_as_int32(255 * LONG_K)] == [-2147483521]


def test_column_sums_in_range_are_exact_per_column() -> None:
    # The ordinary case beside it: each column its own sum, B's zero point taken off every element.
    weights = np.array([[1, 200, 0], [3, 255, 7], [250, 1, 9]], np.uint8)
    assert _colsum_of(weights, None).tolist() == [254, 456, 16]
    assert _colsum_of(weights, np.array(100, np.uint8)).tolist() == [254 - 300, 456 - 300, 16 - 300]


def test_a_graph_input_under_the_prefix_moves_the_added_names_to_the_next_one() -> None:
    # An input (no node makes it, no initializer) named as the rewrite's first zero constant, added to
    # the answer. Counted taken, the added names go under "sluiceway_rowq2/"; not counted, the
    # rewrite's zero became an initializer of the input's name, its default only: the client's 3
    # replaced the 0 in every row's min, max and zero point, and the answers were wrong, silently.
    taken = "sluiceway_rowq/0/zero"
    model = quantized("dql")
    model.graph.input.append(helper.make_tensor_value_info(taken, TensorProto.FLOAT, []))
    model.graph.node[-1].output[0] = "y_mm"
    model.graph.node.append(helper.make_node("Add", ["y_mm", taken], ["y"]))
    x, three = rows(), np.array(3.0, np.float32)
    before = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    alone = [before.run(None, {"x": x[i : i + 1], taken: three})[0][0] for i in range(len(x))]
    assert make_per_row(model).per_row == ["DynamicQuantizeLinear node 'dql'"]
    after = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    batched = after.run(None, {"x": x, taken: three})[0]
    assert batched.shape == (len(x), M)
    for i in range(len(x)):
        np.testing.assert_array_equal(batched[i], alone[i], err_msg=f"row {i}")
    added = [t.name for t in model.graph.initializer if t.name.startswith("sluiceway_rowq")]
    assert added and all(name.startswith("sluiceway_rowq2/0/") for name in added), added


def _branch(value: float) -> onnx.GraphProto:
    """An If branch that makes `sluiceway_rowq/0/zero` itself (a Constant of `value`) and answers it."""
    made = "sluiceway_rowq/0/zero"
    constant = helper.make_node(
        "Constant", [], [made], value=numpy_helper.from_array(np.array(value, np.float32))
    )
    out = f"out{int(value)}"
    return helper.make_graph(
        [constant, helper.make_node("Identity", [made], [out])],
        f"branch{int(value)}",
        [],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [])],
    )


def test_a_name_made_inside_a_subgraph_moves_the_added_names_to_the_next_prefix() -> None:
    # A branch's own tensor under the prefix: made again outside by the rewrite, the graph broke SSA
    # ("used as output names multiple times") and onnxruntime refused it, so the model fell back to
    # per batch. Counted taken, the rewrite loads and each row gets what it gets alone.
    model = quantized("dql")
    graph = model.graph
    graph.input.append(helper.make_tensor_value_info("c", TensorProto.BOOL, []))
    graph.node[-1].output[0] = "y_mm"
    graph.node.append(helper.make_node("If", ["c"], ["add"], then_branch=_branch(3), else_branch=_branch(4)))
    graph.node.append(helper.make_node("Add", ["y_mm", "add"], ["y"]))
    x, yes = rows(), np.array(True)
    before = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    alone = [before.run(None, {"x": x[i : i + 1], "c": yes})[0][0] for i in range(len(x))]
    assert make_per_row(model).per_row == ["DynamicQuantizeLinear node 'dql'"]
    onnx.checker.check_model(model)
    after = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    batched = after.run(None, {"x": x, "c": yes})[0]
    for i in range(len(x)):
        np.testing.assert_array_equal(batched[i], alone[i], err_msg=f"row {i}")
    added = [t.name for t in graph.initializer if t.name.startswith("sluiceway_rowq")]
    assert added and all(name.startswith("sluiceway_rowq2/0/") for name in added), added


def _with_body(graph: onnx.GraphProto, attribute: onnx.AttributeProto) -> onnx.GraphProto:
    graph.node.append(helper.make_node("Custom", [], ["custom_out"], domain="example"))
    graph.node[-1].attribute.append(attribute)
    return graph


def test_the_names_of_every_graph_in_a_graphs_attribute_count_as_taken() -> None:
    # A list of graphs (AttributeProto.GRAPHS, as a custom op may carry): each one's names are
    # looked at, not only a single graph attribute's (`[attr.g]` for every attribute missed them).
    inner = _branch(3)
    attribute = helper.make_attribute("bodies", [_branch(4), inner])
    assert attribute.type == onnx.AttributeProto.GRAPHS
    graph = _with_body(helper.make_graph([], "g", [], []), attribute)
    assert free_prefix(graph, PREFIX) == "sluiceway_rowq2/"


def test_a_subgraphs_names_add_to_those_already_found_outside_it() -> None:
    # The input under the prefix is found first, then a branch with no such name: the branch's
    # names join the set (replacing it with them forgot the input, and the prefix seemed free).
    graph = helper.make_graph(
        [],
        "g",
        [helper.make_tensor_value_info("sluiceway_rowq/0/zero", TensorProto.FLOAT, [])],
        [],
    )
    plain = helper.make_graph(
        [helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.array(1.0, np.float32)))],
        "plain",
        [],
        [helper.make_tensor_value_info("k", TensorProto.FLOAT, [])],
    )
    graph = _with_body(graph, helper.make_attribute("body", plain))
    assert free_prefix(graph, PREFIX) == "sluiceway_rowq2/"
