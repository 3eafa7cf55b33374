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
from server.backends.onnx_einsum import einsum_axes

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
    "Scatter": (0, "axis"),  # ScatterElements before opset 11
    "TensorScatter": (-2, "axis"),  # a cache's sequence axis, written at each row's own place
    "ConcatFromSequence": (0, "axis"),
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
_CONV_OPS = frozenset(  # channels too
    {"Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "DeformConv", "Col2Im", "GroupNormalization"}
)
# Whole-input ops: an output value may depend on any input value, the batch's included (a
# detection's boxes picked over every image, a tensor's non-zero positions, its unique values).
_WHOLE_OPS = frozenset(
    {"NonMaxSuppression", "RoiAlign", "MaxRoiPool", "ImageDecoder", "StringNormalizer"}
    | {"StringSplit", "CenterCropPad"}  # its width the longest row's; all axes unless `axes` says
)
_LOSS_OPS = frozenset({"SoftmaxCrossEntropyLoss", "NegativeLogLikelihoodLoss"})  # mean over the batch
_RECURRENT_OPS = frozenset({"RNN", "LSTM", "GRU"})
MIXING_OPS = (
    REDUCE_OPS
    | _SOFTMAX_OPS
    | frozenset(_AXIS_OPS)
    | _SPATIAL_OPS
    | _CONV_OPS
    | _RECURRENT_OPS
    | _WHOLE_OPS
    | _LOSS_OPS
    | {"CumSum", "CumProd", "LayerNormalization", "RMSNormalization", "MeanVarianceNormalization"}
    | {"BatchNormalization", "LRN", "GatherND", "ScatterND", "DFT", "STFT", "Det", "Unique", "Compress"}
    | {"MatMul", "Gemm", "MatMulInteger", "QLinearMatMul", "Einsum", "Scan", "MaxUnpool"}
    | {"Attention", "LinearAttention", "CausalConvWithState", "RotaryEmbedding", "Multinomial"}
    | {"DepthToSpace", "SpaceToDepth", "GridSample", "TfIdfVectorizer"}
    | {"Slice", "Split", "SplitToSequence", "Concat", "Pad", "Tile"}  # rows moved, picked, added
    | {"Trilu", "EyeLike"}  # a value by its position on two axes (EyeLike: its input's first two)
)
# Ops whose scale and bias broadcast against their input: a scale carrying the batch on another axis
# pairs rows (a tester, session 55: LayerNormalization's Scale sent by clients as ['N']).
SCALED_OPS = frozenset({"LayerNormalization", "RMSNormalization"})
# Standard ops that never mix rows: elementwise on one input (BROADCAST_OPS: on several), per-row
# generators, axis moves the batch's symbol follows (onnx's inference carries it), control flow whose
# bodies are read. A standard op in none
# of these sets, nor any other read here, is taken as mixing along every axis (`unknown_op`): one
# onnx added after this list had loaded batched unread (RMSNormalization, opset 23, gave each
# request its batch mates' statistics, OK; a tester, session 55).
ROW_WISE_OPS = frozenset(
    {
        "Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "Cos", "Cosh", "Sin", "Sinh", "Tan",
        "Tanh", "Exp", "Log", "Sqrt", "Reciprocal", "Neg", "Sign", "Ceil", "Floor", "Round", "Erf",
        "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Gelu", "Mish", "Swish", "HardSigmoid",
        "HardSwish", "Sigmoid", "Softplus", "Softsign", "ThresholdedRelu", "Shrink", "Clip", "Not",
        "BitwiseNot", "IsInf", "IsNaN", "Cast", "CastLike", "BitCast", "Identity", "Dropout", "SwiGLU",
        "QuantizeLinear", "DequantizeLinear", "OneHot", "RegexFullMatch", "AffineGrid",
        "Constant", "ConstantOfShape", "Range", "RandomNormal", "RandomUniform", "RandomNormalLike",
        "RandomUniformLike", "Bernoulli", "HannWindow", "HammingWindow", "BlackmanWindow",
        "MelWeightMatrix", "Squeeze", "Unsqueeze", "Transpose", "Shape", "Size", "If", "Loop",
        "Optional", "OptionalGetElement", "OptionalHasElement", "SequenceConstruct", "SequenceAt",
        "SequenceEmpty", "SequenceErase", "SequenceInsert", "SequenceLength", "SequenceMap",
        # Whole-tensor scales: made per row at load (row_quantization.py), or served with its warning.
        "DynamicQuantizeLinear",
        # Positions over the batch: followed as values made from its size (onnx_batch_size_value.py),
        # its outputs' sizes by onnx_data_sized.py.
        "NonZero",
    }
)  # fmt: skip
# Elementwise ops that broadcast their inputs: one whose batch axis lines up with another's other
# axis pairs each row with every other (x[:, None] - x[None], a pairwise distance).
BROADCAST_OPS = frozenset(
    {
        "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Mean", "Sum", "Where", "PRelu",
        "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Xor", "BitShift",
        "BitwiseAnd", "BitwiseOr", "BitwiseXor", "StringConcat",
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
    if op in ("CumSum", "CumProd"):
        return _one_axis(constant(1), rank)
    if op in _WHOLE_OPS:
        axes = attr(node, "axes", None) if op == "CenterCropPad" else None
        return [(i, list(axes) if isinstance(axes, list) else range(r)) for i, r in enumerate(ranks)]
    if op in _LOSS_OPS:  # its classes' axis; with a reduction (mean by default), every axis
        whole = attr(node, "reduction", b"mean") not in (b"none", "none")
        return [(i, range(r) if whole else [1]) for i, r in enumerate(ranks[:2])]
    if op in REDUCE_OPS:
        return [(0, _reduced(node, rank, constant))]
    if op in SCALED_OPS:
        return [(0, range(int_attribute(node, "axis", -1) % max(rank, 1), rank))]
    if op == "MeanVarianceNormalization":
        return [(0, list(attr(node, "axes", [0, 2, 3])))]  # type: ignore[call-overload]
    if op == "BatchNormalization" and _training(node, opset):
        return [(0, [a for a in range(rank) if a != 1])]
    if op in _SPATIAL_OPS:
        return [(0, range(2, rank))]
    if op in _CONV_OPS:  # its input channels are summed, its kernel spans the rest; weights whole
        return [(0, range(1, rank)), *((i, range(r)) for i, r in enumerate(ranks) if i > 0)]
    if op == "LRN":
        return [(0, [1])]  # across channels
    if op == "GatherND":
        return [(0, [int_attribute(node, "batch_dims", 0)])]  # the first axis its indices name
    if op == "ScatterND":
        return [(0, [0])]  # its indices name positions from the data's axis 0 on
    if op == "DFT":
        if opset < 20:
            return [(0, [int_attribute(node, "axis", 1)])]
        return _one_axis(constant(2), rank) if len(node.input) > 2 and node.input[2] else [(0, [-2])]
    if op == "MatMul":  # the axes contracted (a 1-D second input has only one)
        second = len(ranks) > 1 and ranks[1] == 1
        return [(0, [-1]), (1, [-1] if second else [-2])]
    if op == "Gemm":
        return [(0, [0 if attr(node, "transA", 0) else 1]), (1, [1 if attr(node, "transB", 0) else 0])]
    if op in _RECURRENT_OPS:
        return [(0, [1 if attr(node, "layout", 0) else 0])]  # the sequence axis
    if op in ("Trilu", "Det"):
        return [(0, [-2, -1])]
    return _more(node, ranks) or _moved(node, opset, constant, lengths, rank)


def _more(node: onnx.NodeProto, ranks: Sequence[int]) -> Axes:
    """The ops of later opsets and the rarer ones: sequence models' (along their time axis, -2 of
    [B, S, hidden] and of [B, H, S, D]), image layout moves, samplers, quantized products."""
    op, rank = node.op_type, ranks[0] if ranks else 0
    if op == "EyeLike":
        return [(0, [0, 1])]
    if op in ("MatMulInteger", "QLinearMatMul"):
        b = 1 if op == "MatMulInteger" else 3  # QLinearMatMul's scales and zero points: whole
        quantized = [(i, [0]) for i in range(1, len(ranks)) if op == "QLinearMatMul" and i != b]
        return [(0, [-1]), (b, [-1] if len(ranks) > b and ranks[b] == 1 else [-2]), *quantized]
    if op == "Einsum":
        return einsum_axes(node, ranks)
    if op == "Attention":  # keys and values (and their past) along their sequence, the mask's two
        causal = [(0, [-2])] if attr(node, "is_causal", 0) else []
        return [(1, [-2]), (2, [-2]), (3, [-2, -1]), (4, [-2]), (5, [-2]), *causal]
    if op in ("LinearAttention", "CausalConvWithState"):
        return [(i, range(1, r)) for i, r in enumerate(ranks)]
    if op == "RotaryEmbedding":  # by each position's place in the sequence
        return [(0, [-2, -1])]
    if op in ("DepthToSpace", "SpaceToDepth"):
        return [(0, range(1, rank))]
    if op == "MaxUnpool":  # its indices are flat positions over its whole output, the batch's too
        return [(1, range(ranks[1] if len(ranks) > 1 else 0))]
    if op == "GridSample":
        return [(0, range(2, rank))]
    if op in ("STFT", "Multinomial"):
        return [(0, [1])]
    if op == "TfIdfVectorizer":
        return [(0, [-1])]
    if op == "Unique":  # along any axis it compares whole slices, which span the batch's axis too:
        return [(0, range(rank))]  # Unique(x, axis=1) kept batch mates' columns (a tester, session 60)
    if op == "Compress":  # along its axis, or every axis without one
        axis = attr(node, "axis", None)
        return [(0, [axis] if isinstance(axis, int) else range(rank))]
    return []


# Every standard op read here (onnx_row_mixing.py reads the reshapes, an Expand and a Resize itself).
_KNOWN_OPS = (
    MIXING_OPS | BROADCAST_OPS | ROW_WISE_OPS | {"Reshape", "Flatten", "Expand", "Resize", "Upsample"}
)


def unknown_op(op: str) -> bool:
    """A standard op this reading does not know: taken as mixing along every axis."""
    return op not in _KNOWN_OPS


def _moved(
    node: onnx.NodeProto, opset: int, constant: Constant, lengths: Sequence[int | None], rank: int
) -> Axes:
    """Ops that move rows: a Slice that is not the whole axis (x[:1], a flip), a Split, a Concat
    of two or more, a Pad or a Tile that adds rows. Each request's rows are no longer its own."""
    op = node.op_type
    if op == "Slice":
        return [(0, _sliced(node, opset, constant, lengths[1] if len(lengths) > 1 else None, rank))]
    if op in ("Split", "SplitToSequence"):
        return [(0, [int_attribute(node, "axis", 0)])]
    if op == "Concat" and len(node.input) > 1:
        return [(i, [int_attribute(node, "axis", 0)]) for i in range(len(node.input))]
    if op == "Pad":
        return [(0, _padded(node, opset, constant, rank))]
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


def _sliced(
    node: onnx.NodeProto, opset: int, constant: Constant, named: int | None, rank: int
) -> Sequence[int]:
    """The axes a Slice does not keep whole: not from 0 to the end by steps of 1. Where its
    bounds are computed at run time (torch's chunk, a roll), every axis it names (without `axes`,
    the first `named`, its starts' length): none is known to be kept whole; where its axes are
    computed, any of the `rank` axes, unless every bound keeps its axis whole (read as none, a
    flip of the batch's axis had given each request another's row, a tester, session 58)."""
    starts = _known(node, 1, "starts", opset, 10, constant)
    ends = _known(node, 2, "ends", opset, 10, constant)
    axes = _known(node, 3, "axes", opset, 10, constant)
    steps = _known(node, 4, "steps", opset, 10, constant)
    if axes == [] and starts is None and named is not None:
        axes = list(range(named))
    if axes is None:
        if starts is None or ends is None or steps is None:
            return range(rank)
        steps = steps or [1] * len(starts)
        kept = all(map(keeps_whole, starts, ends, steps))
        return [] if kept else range(rank)
    if not axes and not starts:
        return []
    if starts is None or ends is None or steps is None:
        return axes
    axes = axes or list(range(len(starts)))
    steps = steps or [1] * len(starts)
    return [
        axis
        for axis, start, end, step in zip(axes, starts, ends, steps, strict=False)
        if not keeps_whole(start, end, step)
    ]


def computed_bounds(node: onnx.NodeProto, constant: Constant) -> bool:
    """Whether a Slice's start or end is an input the graph computes (opset 9's are attributes)."""
    return node.op_type == "Slice" and len(node.input) > 1 and any(constant(i) is None for i in (1, 2))


def keeps_whole(start: int | None, end: int | None, step: int | None) -> bool:
    """Whether a Slice's bounds on an axis keep it whole: from 0 to the end by steps of 1."""
    return start == 0 and end is not None and end >= TO_THE_END and step == 1


def _padded(node: onnx.NodeProto, opset: int, constant: Constant, rank: int) -> Sequence[int]:
    """The axes a Pad adds to (pads [begin..., end...] over its axes; none where the pads are
    computed: onnx_grown_rows.py reads those; any of the `rank` axes where its axes are)."""
    pads = _known(node, 1, "pads", opset, 11, constant)
    axes = _known(node, 3, "axes", opset, 18, constant) if opset >= 18 else []
    if not pads:
        return []
    if axes is None:  # computed: pads [0, 1, 0, 1] over axes [1, 0] pad the batch's
        return range(rank) if any(pads) else []
    axes = axes or list(range(len(pads) // 2))
    half = len(pads) // 2
    return [axis for k, axis in enumerate(axes) if k < half and (pads[k] or pads[half + k])]


def scan_inputs(node: onnx.NodeProto, opset: int = 9) -> tuple[int, list[int]]:
    """A Scan's count of state inputs (they come first) and the axis each scan input after them is
    scanned along. Scan-8 (`opset` below 9) scans axis 1 of each: its axis 0 is its own batch, each
    batch row scanned alone (read as axis 0, it was refused: a tester, session 55)."""
    scanned = int_attribute(node, "num_scan_inputs", 0)
    axes = attr(node, "scan_input_axes", None)
    if opset < 9:
        return len(node.input) - scanned, [1] * scanned
    if not isinstance(axes, list):
        return len(node.input) - scanned, [0] * scanned
    return len(node.input) - scanned, [int(a) for a in axes][:scanned]


def paired_axes(node: onnx.NodeProto) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """For a matrix product, (input, axis) of the operand that makes the output's rows and of the
    one that makes its columns: both the batch's (x @ x^T) pair every row with every other.
    Either alone is per row (x @ W, or W @ x^T a column a row)."""
    if node.op_type in ("MatMul", "MatMulInteger", "QLinearMatMul"):
        return (0, -2), (3 if node.op_type == "QLinearMatMul" else 1, -1)
    if node.op_type == "Gemm":
        return (0, 1 if attr(node, "transA", 0) else 0), (1, 0 if attr(node, "transB", 0) else 1)
    return None


def _one_axis(found: np.ndarray | None, rank: int) -> Axes:
    """An axis given as an input's value; any of the `rank` axes where the load cannot tell which
    (computed at run time: `x.dim() - 2` written as Size(Shape(x)) - 2 was the batch's axis, read as
    none and batched, a tester, session 58)."""
    if found is None or found.size != 1:
        return [(0, range(rank))]
    return [(0, [int(found.reshape(-1)[0])])]


def _reduced(node: onnx.NodeProto, rank: int, constant: Constant) -> Sequence[int]:
    given = attr(node, "axes", None)
    axes = [int(a) for a in given] if isinstance(given, list) else None
    if axes is None and len(node.input) > 1 and node.input[1]:
        found = constant(1)
        if found is None:  # computed at run time: any of them (read as none, a tester, session 58)
            return range(rank)
        axes = [int(a) for a in found.reshape(-1)]
    if not axes:  # every axis, unless told to do nothing
        return [] if attr(node, "noop_with_empty_axes", 0) else range(rank)
    return axes
