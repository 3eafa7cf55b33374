"""The axes of a tensor made from an If's output of no known rank, branch by branch (onnx_rankless.py
asks): each branch's value has its own shape, and an op after the If gives each its own output
shape. An axis is read as a kind: the batch's own (SIZE), a length made from its size (MADE), 1,
another length, or one not known. Followed: ops that keep their first input's shape, broadcasts,
a Squeeze, an Unsqueeze or a Transpose as their axes say, a MatMul, a convolution or a pooling (the
batch's axis first, channels, then lengths computed from the input's), a reduction of known axes.
Any other op, or a branch of no known rank, gives a branch not known (None): a Shape of it holds
the batch's size anywhere (a tester, session 65: x / Shape(MatMul(If(c, x, x[None]), W))[0] had
loaded batched).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Collection, Sequence

import numpy as np
import onnx

from server.backends.graph_names import attribute, int_attribute
from server.backends.onnx_mixing_ops import BROADCAST_OPS

Dims = list[int | str | None]
Axes = list[str]
Constant = Callable[[int], "np.ndarray | None"]  # the value of the node's input i, where known
SIZE, MADE, ONE, OTHER, UNKNOWN = "size", "made", "one", "", "?"
MAX_BRANCHES = 16  # combinations of several inputs' branches read; past it, not known
# Ops whose output has their first input's shape.
_SHAPE_KEPT = frozenset({
    "Identity", "Cast", "CastLike", "Relu", "Neg", "Abs", "Sigmoid", "Tanh", "Exp", "Log", "Sqrt", "Not",
    "Sign", "Floor", "Ceil", "Round", "Erf", "Softmax", "LogSoftmax", "Hardmax", "Dropout", "Clip",
    "LeakyRelu", "Elu", "Selu", "Celu", "HardSigmoid", "HardSwish", "Softplus", "Softsign", "Gelu", "Mish",
    "Reciprocal", "Sin", "Cos", "IsNaN", "IsInf", "LayerNormalization", "BatchNormalization",
    "InstanceNormalization", "LpNormalization", "CumSum",
})  # fmt: skip
_WINDOWS = frozenset(
    {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "ConvInteger", "QLinearConv"}
)
_GLOBAL_POOLS = frozenset({"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})
_REDUCTIONS = frozenset({
    "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
})  # fmt: skip


def axis_kind(dim: int | str | None, batch: Collection[str], grown: Collection[str]) -> str:
    """A dim as a branch's axis is read."""
    if isinstance(dim, int):
        return ONE if dim == 1 else OTHER
    return SIZE if dim in batch else MADE if dim in grown else UNKNOWN


def after_op(
    node: onnx.NodeProto, inputs: Sequence[list[Axes | None] | None], constant: Constant
) -> list[Axes | None]:
    """The branches of `node`'s first output: each combination of its inputs' branches (`inputs`,
    per input: an If output's branches, or a plain tensor's one axes; None where not known)."""
    choices = [found if found else [None] for found in inputs]
    if math.prod(len(found) for found in choices) > MAX_BRANCHES:
        return [None]
    return [_one(node, list(combination), constant) for combination in itertools.product(*choices)]


def _one(node: onnx.NodeProto, given: list[Axes | None], constant: Constant) -> Axes | None:
    op, first = node.op_type, given[0] if given else None
    if first is None:
        return None
    if op in _SHAPE_KEPT:
        return first
    if op in ("Squeeze", "Unsqueeze", "Transpose"):
        return _moved(node, first, constant)
    if op in BROADCAST_OPS:
        present = [axes for axes, name in zip(given, node.input, strict=False) if name]
        return (
            None
            if any(axes is None for axes in present)
            else broadcast([a for a in present if a is not None])
        )
    if op == "MatMul" and len(given) == 2 and given[1] is not None:
        return _matmul(first, given[1])
    if op in _WINDOWS and len(first) >= 2:
        return [first[0], OTHER, *(_computed(axis) for axis in first[2:])]
    if op in _GLOBAL_POOLS and len(first) >= 2:
        return [first[0], first[1], *([ONE] * (len(first) - 2))]
    if op in _REDUCTIONS:
        return _reduced(node, first, constant)
    return None


def broadcast(inputs: list[Axes]) -> Axes:
    """Axes broadcast together, aligned from the end: the batch's own where any input has it there,
    else made from its size where any has that, else one not known, another length, or 1."""
    rank = max(len(axes) for axes in inputs)
    padded = [[ONE] * (rank - len(axes)) + axes for axes in inputs]
    return [
        next((kind for kind in (SIZE, MADE, UNKNOWN, OTHER) if kind in column), ONE)
        for column in zip(*padded, strict=True)
    ]


def _computed(axis: str) -> str:
    """A length a window computes from an input's length of this kind."""
    return MADE if axis in (SIZE, MADE) else UNKNOWN if axis == UNKNOWN else OTHER


def _matmul(left: Axes, right: Axes) -> Axes | None:
    if len(left) < 2 or len(right) < 2:
        return None  # (a vector's product: rare after an If of two ranks)
    return [*broadcast([left[:-2], right[:-2]]), left[-2], right[-1]]


def _listed_axes(node: onnx.NodeProto, constant: Constant) -> list[int] | bool | None:
    """An op's `axes`: its attribute's (before opset 13 or 18), else its second input's constant;
    None where it has none; False where computed."""
    given = attribute(node, "axes", None)
    if isinstance(given, list):
        return [int(a) for a in given]
    if len(node.input) > 1 and node.input[1]:
        value = constant(1)
        return False if value is None else [int(a) for a in value.flat]
    return None


def _moved(node: onnx.NodeProto, axes: Axes, constant: Constant) -> Axes | None:
    """A branch's axes after a Squeeze, an Unsqueeze or a Transpose; None where not known (axes
    computed, a Squeeze of every axis of length 1 past an axis of a length not known)."""
    if node.op_type == "Transpose":
        perm = attribute(node, "perm", None)
        order = [int(p) for p in perm] if isinstance(perm, list) else list(reversed(range(len(axes))))
        return [axes[p] for p in order] if sorted(order) == list(range(len(axes))) else None
    listed = _listed_axes(node, constant)
    if listed is False:
        return None
    if node.op_type == "Squeeze":
        if not isinstance(
            listed, list
        ):  # every axis of 1 (the batch's where a request runs alone: read elsewhere)
            return None if UNKNOWN in axes else [axis for axis in axes if axis != ONE]
        dropped = {a % len(axes) for a in listed} if axes else set()
        return [axis for at, axis in enumerate(axes) if at not in dropped]
    if not isinstance(listed, list):
        return None
    grown = list(axes)
    for at in sorted(a % (len(axes) + len(listed)) for a in listed):
        grown.insert(at, ONE)
    return grown


def _reduced(node: onnx.NodeProto, axes: Axes, constant: Constant) -> Axes | None:
    listed = _listed_axes(node, constant)
    if listed is False or (not listed and int_attribute(node, "noop_with_empty_axes", 0)):
        return None if listed is False else list(axes)
    over = (
        {a % len(axes) for a in listed}
        if isinstance(listed, list) and listed and axes
        else set(range(len(axes)))
    )
    if int_attribute(node, "keepdims", 1):
        return [ONE if at in over else axis for at, axis in enumerate(axes)]
    return [axis for at, axis in enumerate(axes) if at not in over]


def axes_reader(
    node: onnx.NodeProto,
    dims: Callable[[str], Dims | None],
    constant: Constant,
    batch: Collection[str],
    grown: Collection[str],
) -> Callable[[str], Axes | None]:
    """A reader of `node`'s inputs' axes as a branch's are read: from their dims, or a small
    constant's shape."""

    def axes(name: str) -> Axes | None:
        read = dims(name)
        if read is None and name in node.input:
            value = constant(list(node.input).index(name))
            read = None if value is None else list(value.shape)
        return None if read is None else [axis_kind(d, batch, grown) for d in read]

    return axes
