"""A size the load reads that is not the run's (a tester, session 62): a Loop's output made from x,
stored [1, 1] by a batch-1 export, is [N, 1] at run time. Its stored sizes are not given back
(onnx_mixing_probe.stored_where_unknown: to tensors made from no input only), a Size of a tensor
made from a batched input whose dims are not known is the batch's size's (onnx_batch_size_value),
and only a rank is folded at load (onnx_constant_fold: Size(Shape(x)), not Size(lo)). An Expand of
x [N, 3] to a fixed [4, 3] broadcasts the batch against 4 (alone: 4 copies of the row)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from server.backends.onnx_row_mixing import row_mixing_outputs
from tests.support.onnx_graphs import ONCE, carried_once, rows_independent

N = helper.make_node
F = TensorProto.FLOAT


def _ints(name: str, values: object) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, np.int64), name)


def _model(
    nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], stored: list[onnx.ValueInfoProto]
) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", F, ["N", 3])
    y = helper.make_tensor_value_info("y", F, None)
    graph = helper.make_graph(nodes, "g", [x], [y], inits, value_info=stored)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


LOOP_INITS = [*ONCE, numpy_helper.from_array(np.array(True), "yes"), _ints("two", 2)]
STALE = [helper.make_tensor_value_info("lo", F, [1, 1])]  # a batch-1 export's stored shape


@pytest.mark.parametrize("use", ["axis", "value"])
def test_a_size_of_a_loop_output_stored_stale_is_the_batchs(use: str) -> None:
    nodes = [
        N("ReduceMax", ["x"], ["x1"], axes=[1], keepdims=1),
        carried_once("x1"),
        N("Size", ["lo"], ["size"]),
    ]
    if use == "axis":  # CumSum along 2 - Size(lo): axis 1 alone, axis -2 (the batch's) for 4 rows
        nodes += [N("Sub", ["two", "size"], ["axis"]), N("CumSum", ["x", "axis"], ["y"])]
    else:  # x / Size(lo): each row divided by the batch's size
        nodes += [N("Cast", ["size"], ["sized"], to=F), N("Div", ["x", "sized"], ["y"])]
    model = _model(nodes, LOOP_INITS, STALE)
    assert not rows_independent(model)
    assert "y" in row_mixing_outputs(model)


def test_a_loop_built_table_of_constants_keeps_its_stored_sizes() -> None:
    # Made from no input: its stored [1, 3] is its size, and x + it batches (session 61's MEDIUM).
    nodes = [carried_once("bias"), N("Add", ["x", "lo"], ["y"])]
    bias = numpy_helper.from_array(np.arange(3, dtype=np.float32).reshape(1, 3), "bias")
    model = _model(nodes, [*LOOP_INITS, bias], [helper.make_tensor_value_info("lo", F, [1, 3])])
    assert rows_independent(model)
    assert row_mixing_outputs(model) == {}


def test_an_expand_to_a_fixed_length_on_the_batchs_axis_is_refused() -> None:
    # Expand(x, [4, 3]) then a sum over axis 0: alone 4 copies of the row, batched the 4 rows.
    nodes = [
        N("Expand", ["x", "shape"], ["t"]),
        N("ReduceSum", ["t", "first"], ["s"], keepdims=1),
        N("Add", ["x", "s"], ["y"]),
    ]
    model = _model(nodes, [_ints("shape", [4, 3]), _ints("first", [0])], [])
    assert not rows_independent(model)
    said = row_mixing_outputs(model).get("y", "")
    assert "broadcasts the batch's axis 0 of 'x' ['N', 3] against a fixed length 4 of its output" in said


def test_an_expand_keeping_the_batchs_axis_batches() -> None:
    nodes = [N("Expand", ["x", "shape"], ["t"]), N("Add", ["x", "t"], ["y"])]
    model = _model(nodes, [_ints("shape", [1, 3])], [])
    assert rows_independent(model)
    assert row_mixing_outputs(model) == {}


def test_a_loop_output_made_from_x_stored_of_sizes_alone_is_not_read_by_them() -> None:
    # lo carries Relu(x), stored [1, 3]: read [?, ?], its first axis was taken as not the batch's
    # and Softmax(lo, axis=0) loaded batched (a tester, session 62). Its body returns it as it
    # takes it, so it is Relu(x)'s [N, 3] (session 65; of no known shape before).
    nodes = [N("Relu", ["x"], ["r"]), carried_once("r"), N("Softmax", ["lo"], ["y"], axis=0)]
    model = _model(nodes, LOOP_INITS, [helper.make_tensor_value_info("lo", F, [1, 3])])
    assert not rows_independent(model)
    assert "works along the batch's axis, axis 0 of 'lo'" in row_mixing_outputs(model)["y"]


def test_a_loop_output_made_from_x_stored_with_a_name_keeps_its_sizes() -> None:
    # Stored ['N', 3] (an exporter of a dynamic model): its 3 is kept, and a view of it batches.
    nodes = [
        N("Relu", ["x"], ["r"]),
        carried_once("r"),
        N("Reshape", ["lo", "split"], ["parts"]),
        N("Softmax", ["parts"], ["soft"], axis=-1),
        N("Reshape", ["soft", "back"], ["y"]),
    ]
    inits = [*LOOP_INITS, _ints("split", [-1, 3, 1]), _ints("back", [-1, 3])]
    model = _model(nodes, inits, [helper.make_tensor_value_info("lo", F, ["N", 3])])
    assert rows_independent(model)
    assert row_mixing_outputs(model) == {}


def test_a_bodys_stale_stored_size_is_not_read() -> None:
    # A batch-1 model saved after onnx's shape inference, then made dynamic by update_model_dims:
    # the If branch keeps t stored [1, 3], and its Softmax along axis 0 had loaded batched.
    from onnx.tools import update_model_dims

    then = helper.make_graph(
        [N("Relu", ["x"], ["t"]), N("Softmax", ["t"], ["o"], axis=0)],
        "then",
        [],
        [helper.make_tensor_value_info("o", F, None)],
    )
    other = helper.make_graph(
        [N("Identity", ["x"], ["e"])], "else", [], [helper.make_tensor_value_info("e", F, None)]
    )
    graph = helper.make_graph(
        [N("If", ["yes"], ["chosen"], then_branch=then, else_branch=other), N("Mul", ["x", "chosen"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", F, [1, 3])],
        [helper.make_tensor_value_info("y", F, [1, 3])],
        [numpy_helper.from_array(np.array(True), "yes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model)
    body = next(a.g for a in model.graph.node[0].attribute if a.name == "then_branch")
    assert [d.dim_value for d in body.value_info[0].type.tensor_type.shape.dim] == [1, 3]  # stored
    model = update_model_dims.update_inputs_outputs_dims(model, {"x": ["N", 3]}, {"y": ["N", 3]})
    assert not rows_independent(model)
    assert "along the batch's axis" in row_mixing_outputs(model)["y"]


def test_an_expand_to_the_shape_of_a_stored_table_is_refused() -> None:
    # T: a Loop-built [4, 3] table (its stored size its own); Expand(x, Shape(T)) then a sum.
    table = numpy_helper.from_array(np.ones((4, 3), np.float32), "table")
    nodes = [
        carried_once("table"),
        N("Shape", ["lo"], ["shape"]),
        N("Expand", ["x", "shape"], ["t"]),
        N("ReduceSum", ["t", "first"], ["s"], keepdims=1),
        N("Add", ["x", "s"], ["y"]),
    ]
    model = _model(
        nodes, [*LOOP_INITS, table, _ints("first", [0])], [helper.make_tensor_value_info("lo", F, [4, 3])]
    )
    assert not rows_independent(model)
    assert "against a fixed length 4" in row_mixing_outputs(model)["y"]


@pytest.mark.parametrize("form", ["size of concat", "size of x[1:]", "size of a loop's output"])
def test_a_size_onnx_could_not_tell_of_a_batched_tensor_is_the_batchs(form: str) -> None:
    # x / Size(Concat(x, x)) (onnx: ['unk__0', 3]), x / Size(x[1:]), x / Size(lo) of a Loop's
    # output of no known shape: each divides by a count the batch sets (a tester, session 62).
    if form == "size of concat":
        made = [N("Concat", ["x", "x"], ["t"], axis=0), N("Size", ["t"], ["n"])]
    elif form == "size of x[1:]":
        made = [N("Slice", ["x", "one", "big", "zero"], ["t"]), N("Size", ["t"], ["n"])]
    else:
        made = [
            N("ReduceMax", ["x"], ["x1"], axes=[1], keepdims=1),
            carried_once("x1"),
            N("Size", ["lo"], ["n"]),
        ]
    nodes = [*made, N("Cast", ["n"], ["nf"], to=F), N("Div", ["x", "nf"], ["y"])]
    inits = [*LOOP_INITS, _ints("one", [1]), _ints("big", [1 << 30]), _ints("zero", [0]), _ints("zero_s", 0)]
    model = _model(nodes, inits, [])
    assert not rows_independent(model)
    assert "takes the batch's size as a value" in row_mixing_outputs(model)["y"]


def test_a_rank_of_a_batched_tensor_of_no_known_shape_is_not_the_batchs_size() -> None:
    # Silero VAD checks the rank of an If's output of two ranks (Size(Shape(t)) == 3): a rank,
    # whatever the batch's size; read as the batch's size, the model had been refused.
    two = helper.make_graph(
        [N("Identity", ["x"], ["kept"])], "kept", [], [helper.make_tensor_value_info("kept", F, None)]
    )
    one = helper.make_graph(
        [N("Unsqueeze", ["x", "zero"], ["grown"])],
        "grown",
        [],
        [helper.make_tensor_value_info("grown", F, None)],
    )
    nodes = [
        N("If", ["yes"], ["t"], then_branch=two, else_branch=one),
        N("Shape", ["t"], ["shape"]),
        N("Size", ["shape"], ["rank"]),
        N("Cast", ["rank"], ["rank_f"], to=F),
        N("Mul", ["x", "rank_f"], ["y"]),
    ]
    model = _model(nodes, [*LOOP_INITS, _ints("zero", [0])], [])
    assert rows_independent(model)
    assert row_mixing_outputs(model) == {}
