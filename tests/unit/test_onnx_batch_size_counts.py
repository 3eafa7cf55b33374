"""The batch's size as a count (server/backends/onnx_batch_size_value.py): where it sets another
axis's width or a value's place (a TopK's K, a OneHot's depth, a Trilu's k, a Pad's, a Tile's or a
Split's sizes, a CumSum's axis, a Slice's bounds off the batch's axis) each request's answer depends
on its batch (a tester, session 56: all batched and answered wrong, OK); where it is a shape that
keeps rows (a Reshape's, an Expand's, a Slice to the batch's length, a constant tiled to the batch)
the graph still batches."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from server.backends.onnx_row_mixing import row_mixing_outputs

F, I64 = TensorProto.FLOAT, TensorProto.INT64
SIZE = [
    helper.make_node("Shape", ["x"], ["shape"]),
    helper.make_node("Gather", ["shape", "zero"], ["n"]),  # [N]
]


def _ints(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, np.int64), name)


def _model(
    nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], dims: tuple[int, ...] = (4,), opset: int = 17
) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", F, ["N", *dims])
    y = helper.make_value_info("y", onnx.TypeProto())
    graph = helper.make_graph([*SIZE, *nodes], "g", [x], [y], [_ints("zero", [0]), *inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize(
    ("nodes", "inits", "dims", "op"),
    [
        ([helper.make_node("TopK", ["x", "n"], ["y", "i"], axis=1)], [], (8,), "TopK"),
        (
            [helper.make_node("Squeeze", ["n"], ["k"]), helper.make_node("Trilu", ["x", "k"], ["y"])],
            [],
            (4, 4),
            "Trilu",
        ),
        (
            [
                helper.make_node("OneHot", ["i", "n", "v"], ["y"]),
                helper.make_node("Cast", ["x"], ["i"], to=I64),
            ],
            [_ints("v", [0, 1])],
            (1,),
            "OneHot",
        ),
        (
            [
                helper.make_node("Concat", ["zeros", "n"], ["pads"], axis=0),
                helper.make_node("Pad", ["x", "pads"], ["y"]),
            ],
            [_ints("zeros", [0, 0, 0])],
            (4,),
            "Pad",
        ),
        (
            [
                helper.make_node("Concat", ["one", "n"], ["times"], axis=0),
                helper.make_node("Tile", ["x", "times"], ["y"]),
            ],
            [_ints("one", [1])],
            (4,),
            "Tile",
        ),
        (
            [helper.make_node("Squeeze", ["n"], ["a"]), helper.make_node("CumSum", ["x", "a"], ["y"])],
            [],
            (4,),
            "CumSum",
        ),
        (
            [helper.make_node("Slice", ["x", "start", "n", "axis1"], ["y"])],
            [_ints("start", [0]), _ints("axis1", [1])],
            (8,),
            "Slice",
        ),
    ],
)
def test_a_count_from_the_batchs_size_that_sets_a_width_or_a_place_mixes(
    nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], dims: tuple[int, ...], op: str
) -> None:
    model = _model(sorted(nodes, key=lambda node: node.op_type != "Cast"), inits, dims)
    why = row_mixing_outputs(model)["y"]
    if op in ("Tile", "Slice"):  # an input taking a shape, a size or a count: named as such
        assert why.startswith(f"the {op} node making 'y' takes '"), why
        assert "as a shape, a size or a count elsewhere than the batch's own axis" in why, why
    else:
        assert why.startswith(f"the {op} node making 'y' takes the batch's size as a value: it meets"), why


def test_a_size_that_keeps_rows_still_batches() -> None:
    tiled = [
        helper.make_node("Concat", ["n", "one"], ["times"], axis=0),
        helper.make_node("Tile", ["row", "times"], ["t"]),  # a constant row, one per request
        helper.make_node("Add", ["x", "t"], ["y"]),
    ]
    row = numpy_helper.from_array(np.ones((1, 4), np.float32), "row")
    assert row_mixing_outputs(_model(tiled, [_ints("one", [1]), row])) == {}
    view = helper.make_node("Concat", ["n", "minus"], ["to"], axis=0)
    flat = [view, helper.make_node("Reshape", ["x", "to"], ["y"])]  # x.view(x.size(0), -1)
    assert row_mixing_outputs(_model(flat, [_ints("minus", [-1])], (2, 2))) == {}


def test_axes_from_the_batchs_size_and_a_second_or_computed_repeat_mix() -> None:
    """`N - N` as a ReduceMean's axes reduced over the batch; a constant [1, 1] tiled by (N, N), and
    by (1, min(N, 2)): each batched, every answer wrong, OK (a tester, session 56)."""
    zero_axis = [
        helper.make_node("Sub", ["n", "n"], ["z"]),
        helper.make_node("ReduceMean", ["x", "z"], ["m"], keepdims=1),
        helper.make_node("Sub", ["x", "m"], ["y"]),
    ]
    why = row_mixing_outputs(_model(zero_axis, [], (4,), opset=18))["y"]
    assert "takes the batch's size as a value" in why, why  # the ReduceMean, then the Sub, each so
    one = numpy_helper.from_array(np.ones((1, 1), np.float32), "one")
    for times in (["n", "n"], ["unit", "k"]):
        tiled = [
            helper.make_node("Min", ["n", "two"], ["k"]),
            helper.make_node("Concat", times, ["times"], axis=0),
            helper.make_node("Tile", ["one", "times"], ["t"]),
            helper.make_node("Concat", ["x", "t"], ["y"], axis=1),
        ]
        inits = [one, _ints("two", [2]), _ints("unit", [1])]
        why = row_mixing_outputs(_model(tiled, inits, (1,)))["y"]  # the Tile's output, made from the size
        assert why.startswith(
            "the Concat node making 'y' takes the batch's size as a value: it meets 'x' with 't'"
        )
