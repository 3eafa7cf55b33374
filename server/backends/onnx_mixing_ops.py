"""Which axes of its inputs each standard ONNX op mixes values along (server/backends/onnx_row_mixing.py
asks whether one of them is the batch's).

An op "mixes along" an axis when an output value depends on input values at other positions of that
axis: a Softmax normalises along it, a reduction sums over it, a convolution's kernel spans it, a
recurrence carries state along it, a Gather picks positions on it. Elementwise ops, and ops that
only move axes (Transpose, Unsqueeze), mix none: the batch's symbol moves with them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx

Axes = list[tuple[int, Sequence[int]]]  # (input index, the axes of that input the op mixes along)
Constant = Callable[[int], "np.ndarray | None"]  # the value of the node's input i, where known

REDUCE_OPS = frozenset(
    {
        "ReduceSum",
        "ReduceMean",
        "ReduceMax",
        "ReduceMin",
        "ReduceProd",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceSumSquare",
    }
)
_SOFTMAX_OPS = frozenset({"Softmax", "LogSoftmax", "Hardmax"})
_AXIS_OPS = {  # op -> (its `axis` attribute's default, the attribute's name): one axis mixed
    "ArgMax": (0, "axis"),
    "ArgMin": (0, "axis"),
    "TopK": (-1, "axis"),
    "LpNormalization": (-1, "axis"),
    "Gather": (0, "axis"),
    "GatherElements": (0, "axis"),
    "ScatterElements": (0, "axis"),
    "ReverseSequence": (0, "time_axis"),
}
_SPATIAL_OPS = frozenset(  # from axis 2 on: a kernel or a whole-image statistic spans them
    {
        "GlobalAveragePool",
        "GlobalMaxPool",
        "GlobalLpPool",
        "InstanceNormalization",
        "MaxPool",
        "AveragePool",
        "LpPool",
    }
)
_CONV_OPS = frozenset({"Conv", "ConvTranspose", "ConvInteger", "QLinearConv"})  # channels too
_RECURRENT_OPS = frozenset({"RNN", "LSTM", "GRU"})
MIXING_OPS = (
    REDUCE_OPS
    | _SOFTMAX_OPS
    | frozenset(_AXIS_OPS)
    | _SPATIAL_OPS
    | _CONV_OPS
    | _RECURRENT_OPS
    | {"CumSum", "LayerNormalization", "MeanVarianceNormalization", "BatchNormalization", "LRN"}
    | {"GatherND", "ScatterND", "DFT", "MatMul", "Gemm", "Scan"}
)
# Ops whose outputs' values do not depend on the values of some inputs: the inputs that do count.
VALUE_INPUTS: dict[str, tuple[int, ...]] = {
    "Shape": (),
    "Size": (),
    "EyeLike": (),
    "RandomNormalLike": (),
    "RandomUniformLike": (),
    "CastLike": (0,),  # the second input gives the type only
}


def attr(node: onnx.NodeProto, name: str, default: object) -> object:
    for found in node.attribute:
        if found.name == name:
            return onnx.helper.get_attribute_value(found)
    return default


def _int(node: onnx.NodeProto, name: str, default: int) -> int:
    return int(attr(node, name, default))  # type: ignore[call-overload]


def mixed_axes(node: onnx.NodeProto, ranks: Sequence[int], opset: int, constant: Constant) -> Axes:
    """The axes of its inputs along which the standard op `node` mixes values (none where unknown).
    `ranks`: its inputs' (0 where unknown); `opset`: the model's standard opset."""
    op, rank = node.op_type, ranks[0] if ranks else 0
    if op in _SOFTMAX_OPS:
        axis = _int(node, "axis", -1 if opset >= 13 else 1)
        # Before opset 13 the input is read as 2-D, [axis:] flattened into each row.
        return [(0, [axis] if opset >= 13 else range(axis % max(rank, 1), rank))]
    if op in _AXIS_OPS:
        default, name = _AXIS_OPS[op]
        return [(0, [_int(node, name, default)])]
    if op == "CumSum":
        return _one_axis(constant(1))
    if op in REDUCE_OPS:
        return [(0, _reduced(node, rank, constant))]
    if op == "LayerNormalization":
        return [(0, range(_int(node, "axis", -1) % max(rank, 1), rank))]
    if op == "MeanVarianceNormalization":
        return [(0, list(attr(node, "axes", [0, 2, 3])))]  # type: ignore[call-overload]
    if op == "BatchNormalization" and attr(node, "training_mode", 0):
        return [(0, [a for a in range(rank) if a != 1])]
    if op in _SPATIAL_OPS:
        return [(0, range(2, rank))]
    if op in _CONV_OPS:
        return [(0, range(1, rank))]  # its input channels are summed, its kernel spans the rest
    if op == "LRN":
        return [(0, [1])]  # across channels
    if op == "GatherND":
        return [(0, [_int(node, "batch_dims", 0)])]  # the first axis its indices name
    if op == "ScatterND":
        return [(0, [0])]  # its indices name positions from the data's axis 0 on
    if op == "DFT":
        if opset < 20:
            return [(0, [_int(node, "axis", 1)])]
        return _one_axis(constant(2)) if len(node.input) > 2 and node.input[2] else [(0, [-2])]
    if op == "MatMul":  # the axes contracted (a 1-D second input has only one)
        second = len(ranks) > 1 and ranks[1] == 1
        return [(0, [-1]), (1, [-1] if second else [-2])]
    if op == "Gemm":
        return [(0, [0 if attr(node, "transA", 0) else 1]), (1, [1 if attr(node, "transB", 0) else 0])]
    if op in _RECURRENT_OPS:
        return [(0, [1 if attr(node, "layout", 0) else 0])]  # the sequence axis
    return []


def paired_axes(node: onnx.NodeProto) -> tuple[int, int] | None:
    """For a MatMul or Gemm, the axis of its first input that makes the output's rows and the axis
    of its second that makes its columns: both the batch's (x @ x^T) pair every row with every
    other. Either alone is per row (x @ W, or W @ x^T a column a row)."""
    if node.op_type == "MatMul":
        return -2, -1
    if node.op_type == "Gemm":
        return (1 if attr(node, "transA", 0) else 0), (0 if attr(node, "transB", 0) else 1)
    return None


def _one_axis(found: np.ndarray | None) -> Axes:
    """An axis given as an input's value: none where it is not known, or not one value."""
    if found is None or found.size != 1:
        return []
    return [(0, [int(found.reshape(-1)[0])])]


def _reduced(node: onnx.NodeProto, rank: int, constant: Constant) -> Sequence[int]:
    axes = attr(node, "axes", None)
    if axes is None and len(node.input) > 1 and node.input[1]:
        found = constant(1)
        if found is None:
            return []  # axes computed at run time: cannot be told
        axes = [int(a) for a in found.reshape(-1)]
    if not axes:  # every axis, unless told to do nothing
        return [] if attr(node, "noop_with_empty_axes", 0) else range(rank)
    return list(axes)  # type: ignore[call-overload]
