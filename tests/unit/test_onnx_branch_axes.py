"""onnx_branch_axes.py on its own: the axes an op after an If of two ranks gives each branch, kind by
kind (the batch's own, made from its size, 1, another length, not known). The row-mixing tests read
these through whole graphs, where a branch not known is refused as surely as one read exactly; here
each op's reading is pinned."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pytest
from onnx import helper

from server.backends.onnx_branch_axes import (
    MADE,
    MAX_BRANCHES,
    ONE,
    OTHER,
    SIZE,
    UNKNOWN,
    after_op,
    axes_reader,
    axis_kind,
    broadcast,
)

Axes = list[str]


def op(kind: str, inputs: tuple[str, ...] = ("t",), **attrs: object) -> onnx.NodeProto:
    return helper.make_node(kind, list(inputs), ["out"], **attrs)


def values(**given: list[int]) -> Callable[[int], np.ndarray | None]:
    """A node's constant inputs: i1=[...] is input 1's value."""
    return lambda at: np.asarray(given[f"i{at}"], np.int64) if f"i{at}" in given else None


NONE: Callable[[int], np.ndarray | None] = values()


def one(
    node: onnx.NodeProto, *inputs: Axes | None, constant: Callable[[int], np.ndarray | None] = NONE
) -> Axes | None:
    """The op's output axes for one branch of each input."""
    (found,) = after_op(node, [[axes] if axes is not None else None for axes in inputs], constant)
    return found


def test_a_dims_kind() -> None:
    batch, grown = {"N"}, {"unk__1"}
    assert [axis_kind(d, batch, grown) for d in (1, 2, 3, "N", "unk__1", "T", None)] == [
        ONE,
        OTHER,
        OTHER,
        SIZE,
        MADE,
        UNKNOWN,
        UNKNOWN,
    ]


def test_broadcast_aligns_from_the_end_and_ranks_the_kinds() -> None:
    assert broadcast([[SIZE, OTHER], [OTHER]]) == [SIZE, OTHER]
    assert broadcast([[ONE, ONE], [ONE]]) == [ONE, ONE]
    assert broadcast([[ONE, MADE], [UNKNOWN, OTHER]]) == [UNKNOWN, MADE]
    assert broadcast([[SIZE, ONE, OTHER], [SIZE, OTHER]]) == [SIZE, SIZE, OTHER]  # the batch twice
    assert broadcast([[OTHER, UNKNOWN], [ONE, ONE]]) == [OTHER, UNKNOWN]


def test_ops_that_keep_or_broadcast_shapes() -> None:
    assert one(op("Relu"), [SIZE, ONE, OTHER]) == [SIZE, ONE, OTHER]
    assert one(op("Add", ("t", "bias")), [SIZE, ONE, OTHER], [OTHER]) == [SIZE, ONE, OTHER]
    assert one(op("Add", ("t", "bias")), [SIZE, OTHER], None) is None  # the other input not known
    assert one(op("Flatten"), [SIZE, OTHER]) is None  # not followed


@pytest.mark.parametrize(
    ("node", "constant", "given", "made"),
    [
        (op("Transpose"), NONE, [SIZE, ONE, OTHER], [OTHER, ONE, SIZE]),
        (op("Transpose", perm=[1, 0, 2]), NONE, [SIZE, ONE, OTHER], [ONE, SIZE, OTHER]),
        (op("Transpose", perm=[1, 0]), NONE, [SIZE, ONE, OTHER], None),  # another rank's perm
        (op("Squeeze", axes=[1]), NONE, [SIZE, ONE, OTHER], [SIZE, OTHER]),  # opset 11's attribute
        (op("Squeeze", ("t", "axes")), values(i1=[-2]), [SIZE, ONE, OTHER], [SIZE, OTHER]),
        (op("Squeeze", ("t", "axes")), NONE, [SIZE, ONE, OTHER], None),  # computed axes
        (op("Squeeze"), NONE, [SIZE, ONE, OTHER, ONE], [SIZE, OTHER]),  # every axis of 1
        (op("Squeeze"), NONE, [SIZE, UNKNOWN], None),  # an axis that may be 1
        (op("Unsqueeze", axes=[0]), NONE, [SIZE, OTHER], [ONE, SIZE, OTHER]),
        (op("Unsqueeze", ("t", "axes")), values(i1=[-1]), [SIZE, OTHER], [SIZE, OTHER, ONE]),
        (op("Unsqueeze", ("t", "axes")), values(i1=[1, 3]), [SIZE, OTHER], [SIZE, ONE, OTHER, ONE]),
        (op("Unsqueeze", ("t", "axes")), NONE, [SIZE, OTHER], None),
        (op("Unsqueeze"), NONE, [SIZE, OTHER], None),
    ],
)
def test_axes_moved(
    node: onnx.NodeProto, constant: Callable[[int], np.ndarray | None], given: Axes, made: Axes | None
) -> None:
    assert one(node, given, None, constant=constant) == made


def test_a_matmul_keeps_its_stacks_and_its_rows() -> None:
    mm = op("MatMul", ("t", "w"))
    assert one(mm, [SIZE, OTHER], [OTHER, UNKNOWN]) == [SIZE, UNKNOWN]
    assert one(mm, [ONE, SIZE, OTHER], [OTHER, OTHER]) == [ONE, SIZE, OTHER]
    assert one(mm, [SIZE, ONE, OTHER], [OTHER, MADE]) == [SIZE, ONE, MADE]
    assert one(mm, [UNKNOWN, ONE, SIZE, OTHER], [OTHER, OTHER]) == [UNKNOWN, ONE, SIZE, OTHER]
    assert one(mm, [OTHER, OTHER], [SIZE, OTHER, OTHER]) == [SIZE, OTHER, OTHER]
    assert one(mm, [OTHER, OTHER], [SIZE, OTHER, MADE]) == [SIZE, OTHER, MADE]  # the right's last axis
    assert one(mm, [OTHER], [OTHER, OTHER]) is None  # a vector's product
    assert one(mm, [SIZE, OTHER], [OTHER]) is None
    assert one(mm, [SIZE, OTHER], None) is None


@pytest.mark.parametrize("kind", ["Conv", "MaxPool", "AveragePool", "ConvTranspose"])
def test_a_window_keeps_the_first_axis_and_computes_the_rest(kind: str) -> None:
    assert one(op(kind), [SIZE, ONE, OTHER]) == [SIZE, OTHER, OTHER]
    assert one(op(kind), [ONE, OTHER, SIZE, UNKNOWN, MADE]) == [ONE, OTHER, MADE, UNKNOWN, MADE]
    assert one(op(kind), [SIZE, OTHER]) == [SIZE, OTHER]
    assert one(op(kind), [SIZE]) is None


def test_a_global_pool_keeps_the_first_two_axes() -> None:
    assert one(op("GlobalAveragePool"), [SIZE, OTHER, OTHER, UNKNOWN]) == [SIZE, OTHER, ONE, ONE]
    assert one(op("GlobalMaxPool"), [ONE, SIZE]) == [ONE, SIZE]
    assert one(op("GlobalMaxPool"), [SIZE]) is None


@pytest.mark.parametrize(
    ("node", "constant", "made"),
    [
        (op("ReduceSum", ("t", "axes")), values(i1=[1]), [SIZE, ONE, OTHER]),  # keepdims by default
        (op("ReduceSum", ("t", "axes"), keepdims=0), values(i1=[-1]), [SIZE, ONE]),
        (op("ReduceMean", axes=[0, 2], keepdims=0), NONE, [ONE]),  # the attribute before opset 18
        (op("ReduceMax"), NONE, [ONE, ONE, ONE]),  # every axis
        (op("ReduceSum", ("t", "axes")), values(i1=[]), [ONE, ONE, ONE]),  # no axes given: every one
        (op("ReduceMax", keepdims=0), NONE, []),
        (op("ReduceSum", noop_with_empty_axes=1), NONE, [SIZE, ONE, OTHER]),
        (op("ReduceSum", ("t", "axes")), NONE, None),  # computed axes
        (op("ReduceSum", ("t", "axes"), noop_with_empty_axes=1), NONE, None),
    ],
)
def test_a_reduction_of_known_axes(
    node: onnx.NodeProto, constant: Callable[[int], np.ndarray | None], made: Axes | None
) -> None:
    assert one(node, [SIZE, ONE, OTHER], None, constant=constant) == made


def test_every_combination_of_several_inputs_branches_is_read_up_to_a_limit() -> None:
    add = op("Add", ("t", "u"))
    t, u = [[SIZE, OTHER], [ONE, SIZE, OTHER]], [[OTHER], [SIZE, ONE, ONE]]
    assert after_op(add, [t, u], NONE) == [
        [SIZE, OTHER],
        [SIZE, SIZE, OTHER],
        [ONE, SIZE, OTHER],
        [SIZE, SIZE, OTHER],
    ]
    four: list[Axes | None] = [[SIZE], [ONE], [OTHER], [MADE]]
    assert len(after_op(add, [four, four], NONE)) == MAX_BRANCHES == 16
    assert after_op(add, [four, [*four, [UNKNOWN]]], NONE) == [None]  # 20 combinations: not read
    assert after_op(op("Relu"), [None], NONE) == [None]


def test_an_inputs_axes_are_read_from_its_dims_or_its_constant_value() -> None:
    node = op("Add", ("t", "bias", "w"))
    dims = {"t": ["N", 1, "unk__3"]}.get
    read = axes_reader(node, dims, values(i1=[[1.0, 2.0, 3.0]]), {"N"}, {"unk__3"})
    assert read("t") == [SIZE, ONE, MADE]
    assert read("bias") == [ONE, OTHER]  # its value [[1, 2, 3]]: shape [1, 3]
    assert read("w") is None  # neither
    assert read("elsewhere") is None  # not the node's input
