"""The batch's size carried out of a node with several outputs or a body (server/backends/
onnx_batch_size_value.py, onnx_size_positions.py). A tester, session 57, had each of these batched,
every answer x * 4 or x + k for four requests, OK: a Loop run N times stacking Cast(iteration) (as
arange(N)) or a constant then summed along it; a Loop body, an If branch or a Scan reading the
outer N into what it returns; a Loop whose condition is N > 1 or whose body stops at the outer N;
the second output of a Split of a shape or of [N, N]; a constant reshaped to (N, -1). Each is
refused now; a Split of a shape into its dims keeps each dim's reading."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from server.backends.onnx_row_mixing import row_mixing_outputs

F, I64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
SIZE = [
    helper.make_node("Shape", ["x"], ["shape"]),
    helper.make_node("Gather", ["shape", "zero"], ["n"]),  # N, a scalar
    helper.make_node("Cast", ["n"], ["nf"], to=F),
]
AS_VALUE = "takes the batch's size as a value: it meets 'x'"


def _model(nodes: list[onnx.NodeProto], extra: list[onnx.TensorProto] | None = None) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", F, ["N", 4])
    y = helper.make_value_info("y", onnx.TypeProto())
    inits = [
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array(True), "true"),
        numpy_helper.from_array(np.zeros(1, np.float32), "start"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        *(extra or []),
    ]
    graph = helper.make_graph([*SIZE, *nodes], "g", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _body(nodes: list[onnx.NodeProto], carried: list[str], scans: list[str]) -> onnx.GraphProto:
    """A Loop body: (i, cond, carried...) -> (cond, carried..., scans...), float [1] values."""
    inputs = [helper.make_tensor_value_info("i", I64, []), helper.make_tensor_value_info("go", BOOL, [])]
    inputs += [helper.make_tensor_value_info(f"{name}_in", F, [1]) for name in carried]
    outputs = [helper.make_tensor_value_info("go_out", BOOL, [])]
    outputs += [helper.make_tensor_value_info(name, F, [1]) for name in (*carried, *scans)]
    copies = [helper.make_node("Identity", ["go"], ["go_out"])] if "go_out" not in _made(nodes) else []
    return helper.make_graph([*copies, *nodes], "body", inputs, outputs)


def _made(nodes: list[onnx.NodeProto]) -> set[str]:
    return {name for node in nodes for name in node.output}


def _refused(model: onnx.ModelProto, why: str = AS_VALUE) -> str:
    got = row_mixing_outputs(model)
    assert why in got.get("y", ""), got
    return got["y"]


def test_a_loop_run_as_many_times_as_the_batch_has_rows_stacks_values_made_from_its_size() -> None:
    iteration = _body([helper.make_node("Cast", ["i"], ["k"], to=F)], [], ["k"])  # stacked: arange(N)
    nodes = [
        helper.make_node("Loop", ["n", "true"], ["stack"], body=iteration),
        helper.make_node("Add", ["x", "stack"], ["y"]),
    ]
    _refused(_model(nodes))
    ones = _body(
        [helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.ones(1, np.float32)))],
        [],
        ["k"],
    )
    summed = [
        helper.make_node("Loop", ["n", "true"], ["stack"], body=ones),
        helper.make_node("CumSum", ["stack", "zero"], ["c"]),
        helper.make_node("Mul", ["x", "c"], ["y"]),
    ]
    _refused(_model(summed))


def test_a_body_reading_the_outer_batchs_size_returns_values_made_from_it() -> None:
    reads = _body([helper.make_node("Add", ["acc_in", "nf"], ["acc"])], ["acc"], [])
    looped = [helper.make_node("Loop", ["one", "true", "start"], ["acc"], body=reads)]
    _refused(_model([*looped, helper.make_node("Mul", ["x", "acc"], ["y"])], [_i64("one", 1)]))
    branch = helper.make_graph(
        [helper.make_node("Identity", ["nf"], ["k"])], "then", [], [helper.make_tensor_value_info("k", F, [])]
    )
    other = helper.make_graph(
        [helper.make_node("Constant", [], ["k1"], value=numpy_helper.from_array(np.array(1.0, np.float32)))],
        "else",
        [],
        [helper.make_tensor_value_info("k1", F, [])],
    )
    chosen = [helper.make_node("If", ["true"], ["k"], then_branch=branch, else_branch=other)]
    _refused(_model([*chosen, helper.make_node("Mul", ["x", "k"], ["y"])]))
    state = helper.make_graph(
        [helper.make_node("Add", ["s_in", "nf"], ["s"]), helper.make_node("Identity", ["e"], ["e_out"])],
        "scan",
        [helper.make_tensor_value_info("s_in", F, [1]), helper.make_tensor_value_info("e", F, [1])],
        [helper.make_tensor_value_info("s", F, [1]), helper.make_tensor_value_info("e_out", F, [1])],
    )
    seq = numpy_helper.from_array(np.zeros((1, 1), np.float32), "seq")
    scanned = [helper.make_node("Scan", ["start", "seq"], ["s", "es"], body=state, num_scan_inputs=1)]
    _refused(_model([*scanned, helper.make_node("Mul", ["x", "s"], ["y"])], [seq]))


def test_a_loop_stopped_by_the_batchs_size_carries_a_count_made_from_it() -> None:
    count = _body([helper.make_node("Add", ["c_in", "unit"], ["c"])], ["c"], [])
    count.initializer.append(numpy_helper.from_array(np.ones(1, np.float32), "unit"))
    bigger = [helper.make_node("Greater", ["n", "one"], ["more"])]  # N > 1 as its condition
    looped = [helper.make_node("Loop", ["three", "more", "start"], ["c"], body=count)]
    inits = [_i64("one", 1), _i64("three", 3)]
    _refused(_model([*bigger, *looped, helper.make_node("Mul", ["x", "c"], ["y"])], inits))
    stops = [
        helper.make_node("Add", ["c_in", "unit"], ["c"]),
        helper.make_node("Add", ["i", "step"], ["next"]),
        helper.make_node("Less", ["next", "n"], ["go_out"]),  # while i + 1 < the outer N
    ]
    body = _body(stops, ["c"], [])
    body.initializer.extend(
        [
            numpy_helper.from_array(np.ones(1, np.float32), "unit"),
            numpy_helper.from_array(np.array(1), "step"),
        ]
    )
    unbounded = [helper.make_node("Loop", ["", "true", "start"], ["c"], body=body)]
    _refused(_model([*unbounded, helper.make_node("Mul", ["x", "c"], ["y"])]))


def test_a_split_shares_the_size_by_its_parts() -> None:
    pair = [
        helper.make_node("Unsqueeze", ["nf", "zero1"], ["n1"]),
        helper.make_node("Concat", ["n1", "n1"], ["nn"], axis=0),
        helper.make_node("Split", ["nn", "ones"], ["a", "b"]),
        helper.make_node("Mul", ["x", "b"], ["y"]),
    ]
    _refused(_model(pair, [_i64s("zero1", [0]), _i64s("ones", [1, 1])]))
    # x.shape split into (n, c): c is a dim, not the size, so x.view(n, c) is a shape that keeps rows.
    dims = [
        helper.make_node("Split", ["shape", "ones"], ["rows", "width"]),
        helper.make_node("Concat", ["rows", "width"], ["to"], axis=0),
        helper.make_node("Reshape", ["x", "to"], ["v"]),
        helper.make_node("Mul", ["v", "w"], ["y"]),
    ]
    weight = numpy_helper.from_array(np.ones((1, 4), np.float32), "w")
    assert row_mixing_outputs(_model(dims, [_i64s("ones", [1, 1]), weight])) == {}
    swapped = [  # the size moved to the second part, then taken as a value
        helper.make_node("Split", ["shape", "ones"], ["rows", "width"]),
        helper.make_node("Concat", ["width", "rows"], ["wr"], axis=0),
        helper.make_node("Split", ["wr", "ones"], ["w2", "r2"]),
        helper.make_node("Cast", ["r2"], ["rf"], to=F),
        helper.make_node("Mul", ["x", "rf"], ["y"]),
    ]
    _refused(_model(swapped, [_i64s("ones", [1, 1])]))


def test_a_constant_reshaped_to_the_batchs_size_is_cut_by_it() -> None:
    """arange(8).reshape(N, -1).sum(1): alone 28, one of four batched 1."""
    nodes = [
        helper.make_node("Unsqueeze", ["n", "zero1"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus"], ["to"], axis=0),
        helper.make_node("Reshape", ["c8", "to"], ["r"]),
        helper.make_node("ReduceSum", ["r", "axis1"], ["s"], keepdims=1),
        helper.make_node("Add", ["x", "s"], ["y"]),
    ]
    c8 = numpy_helper.from_array(np.arange(8, dtype=np.float32), "c8")
    why = _refused(_model(nodes, [_i64s("zero1", [0]), _i64s("minus", [-1]), c8]), "the Add node making 'y'")
    assert "made from the batch's size" in why, why


def _i64(name: str, value: int) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, np.int64), name)


def _i64s(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)
