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

from server.backends.graph_names import attribute as attr
from server.backends.graph_names import int_attribute

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
    | {"Slice", "Split", "SplitToSequence", "Concat", "Pad", "Tile"}  # rows moved, picked, added
    | {"Trilu"}  # zeroes a value by its position on its last two axes
)
# Elementwise ops that broadcast their inputs: one whose batch axis lines up with another's other
# axis pairs each row with every other (x[:, None] - x[None], a pairwise distance).
BROADCAST_OPS = frozenset(
    {
        "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Mean", "Sum", "Where", "PRelu",
        "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Xor", "BitShift",
    }
)  # fmt: skip
TO_THE_END = 2**31 - 1  # a Slice's end at least this: to the end of its axis (torch writes 2**63 - 1)
# Ops whose outputs' values do not depend on the values of some inputs: the inputs that do count.
VALUE_INPUTS: dict[str, tuple[int, ...]] = {
    "Shape": (),
    "Size": (),
    "EyeLike": (),
    "RandomNormalLike": (),
    "RandomUniformLike": (),
    "CastLike": (0,),  # the second input gives the type only
}


def mixed_axes(
    node: onnx.NodeProto,
    ranks: Sequence[int],
    opset: int,
    constant: Constant,
    lengths: Sequence[int | None] = (),
) -> Axes:
    """The axes of its inputs along which the standard op `node` mixes values (none where unknown).
    `ranks`: its inputs' (0 where unknown); `lengths`: their first dims where fixed (a computed
    Slice's starts: how many axes it names); `opset`: the model's standard opset."""
    op, rank = node.op_type, ranks[0] if ranks else 0
    if op in _SOFTMAX_OPS:
        axis = int_attribute(node, "axis", -1 if opset >= 13 else 1)
        # Before opset 13 the input is read as 2-D, [axis:] flattened into each row.
        return [(0, [axis] if opset >= 13 else range(axis % max(rank, 1), rank))]
    if op in _AXIS_OPS:
        default, name = _AXIS_OPS[op]
        return [(0, [int_attribute(node, name, default)])]
    if op == "CumSum":
        return _one_axis(constant(1))
    if op in REDUCE_OPS:
        return [(0, _reduced(node, rank, constant))]
    if op == "LayerNormalization":
        return [(0, range(int_attribute(node, "axis", -1) % max(rank, 1), rank))]
    if op == "MeanVarianceNormalization":
        return [(0, list(attr(node, "axes", [0, 2, 3])))]  # type: ignore[call-overload]
    if op == "BatchNormalization" and _training(node, opset):
        return [(0, [a for a in range(rank) if a != 1])]
    if op in _SPATIAL_OPS:
        return [(0, range(2, rank))]
    if op in _CONV_OPS:
        return [(0, range(1, rank))]  # its input channels are summed, its kernel spans the rest
    if op == "LRN":
        return [(0, [1])]  # across channels
    if op == "GatherND":
        return [(0, [int_attribute(node, "batch_dims", 0)])]  # the first axis its indices name
    if op == "ScatterND":
        return [(0, [0])]  # its indices name positions from the data's axis 0 on
    if op == "DFT":
        if opset < 20:
            return [(0, [int_attribute(node, "axis", 1)])]
        return _one_axis(constant(2)) if len(node.input) > 2 and node.input[2] else [(0, [-2])]
    if op == "MatMul":  # the axes contracted (a 1-D second input has only one)
        second = len(ranks) > 1 and ranks[1] == 1
        return [(0, [-1]), (1, [-1] if second else [-2])]
    if op == "Gemm":
        return [(0, [0 if attr(node, "transA", 0) else 1]), (1, [1 if attr(node, "transB", 0) else 0])]
    if op in _RECURRENT_OPS:
        return [(0, [1 if attr(node, "layout", 0) else 0])]  # the sequence axis
    if op == "Trilu":
        return [(0, [-2, -1])]
    return _moved(node, opset, constant, lengths)


def _moved(node: onnx.NodeProto, opset: int, constant: Constant, lengths: Sequence[int | None]) -> Axes:
    """Ops that move rows: a Slice that is not the whole axis (x[:1], a flip), a Split, a Concat
    of two or more, a Pad or a Tile that adds rows. Each request's rows are no longer its own."""
    op = node.op_type
    if op == "Slice":
        return [(0, _sliced(node, opset, constant, lengths[1] if len(lengths) > 1 else None))]
    if op in ("Split", "SplitToSequence"):
        return [(0, [int_attribute(node, "axis", 0)])]
    if op == "Concat" and len(node.input) > 1:
        return [(i, [int_attribute(node, "axis", 0)]) for i in range(len(node.input))]
    if op == "Pad":
        return [(0, _padded(node, opset, constant))]
    if op == "Tile" and (repeats := constant(1)) is not None:
        return [(0, [a for a, times in enumerate(repeats.reshape(-1)) if times != 1])]
    return []


def _training(node: onnx.NodeProto, opset: int) -> bool:
    """A BatchNormalization in training mode: its attribute from opset 14, its running statistics
    asked for as outputs before (torch's training=TRAINING export at opset 13)."""
    if opset >= 14:
        return bool(attr(node, "training_mode", 0))
    return sum(1 for name in node.output if name) > 1


def _known(
    node: onnx.NodeProto, index: int, name: str, opset: int, since: int, constant: Constant
) -> list[int] | None:
    """An int list a node takes as an attribute before opset `since` and as input `index` after."""
    if opset < since:  # an attribute, known: absent, its default ([])
        return [int(v) for v in attr(node, name, [])]  # type: ignore[attr-defined]
    if index >= len(node.input) or not node.input[index]:
        return []
    value = constant(index)
    return None if value is None else [int(v) for v in value.reshape(-1)]


def _sliced(node: onnx.NodeProto, opset: int, constant: Constant, named: int | None) -> Sequence[int]:
    """The axes a Slice does not keep whole: not from 0 to the end by steps of 1. Where its
    bounds are computed at run time (torch's chunk, a roll), every axis it names (without `axes`,
    the first `named`, its starts' length): none is known to be kept whole; where its axes are
    computed, none."""
    starts = _known(node, 1, "starts", opset, 10, constant)
    ends = _known(node, 2, "ends", opset, 10, constant)
    axes = _known(node, 3, "axes", opset, 10, constant)
    steps = _known(node, 4, "steps", opset, 10, constant)
    if axes == [] and starts is None and named is not None:
        axes = list(range(named))
    if axes is None or (not axes and not starts):
        return []
    if starts is None or ends is None or steps is None:
        return axes
    axes = axes or list(range(len(starts)))
    steps = steps or [1] * len(starts)
    return [
        axis
        for axis, start, end, step in zip(axes, starts, ends, steps, strict=False)
        if not (start == 0 and end >= TO_THE_END and step == 1)
    ]


def _padded(node: onnx.NodeProto, opset: int, constant: Constant) -> Sequence[int]:
    """The axes a Pad adds to (pads [begin..., end...] over its axes; none where computed)."""
    pads = _known(node, 1, "pads", opset, 11, constant)
    axes = _known(node, 3, "axes", opset, 18, constant) if opset >= 18 else []
    if not pads:
        return []
    axes = axes or list(range(len(pads) // 2))
    half = len(pads) // 2
    return [axis for k, axis in enumerate(axes) if k < half and (pads[k] or pads[half + k])]


def scan_inputs(node: onnx.NodeProto) -> tuple[int, list[int]]:
    """A Scan's count of state inputs (they come first) and the axis each scan input after them is
    scanned along."""
    scanned = int_attribute(node, "num_scan_inputs", 0)
    axes = attr(node, "scan_input_axes", None)
    return len(node.input) - scanned, [int(a) for a in axes][:scanned] if isinstance(axes, list) else [
        0
    ] * scanned


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
    given = attr(node, "axes", None)
    axes = [int(a) for a in given] if isinstance(given, list) else None
    if axes is None and len(node.input) > 1 and node.input[1]:
        found = constant(1)
        if found is None:
            return []  # axes computed at run time: cannot be told
        axes = [int(a) for a in found.reshape(-1)]
    if not axes:  # every axis, unless told to do nothing
        return [] if attr(node, "noop_with_empty_axes", 0) else range(rank)
    return axes
