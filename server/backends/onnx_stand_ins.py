"""Standard ops standing in, in the copies of a graph that onnx's shape inference reads (the
row-mixing reading's probe, onnx_mixing_probe.py, and the outputs' shapes, onnx_output_shapes.py),
for the ops of other domains that onnxruntime's optimizer and quantizer write: com.microsoft's fused
activations, normalisations, products and QLinear ops, and ONNX ops onnxruntime runs at opsets
before ONNX defines them (LayerNormalization below 17). The transformer ops and com.microsoft's
copies of standard ops are onnx_stand_ins_contrib.py's.

onnx's shape inference knows no such op: it gave their outputs no shape, and every op after them
none either, so a ReduceSum over the batch after a fused Gelu loaded batched unread (the model as
written was refused; saved by onnxruntime's offline optimizer, it mixed four clients' rows, OK; a
tester, session 56), and a model whose output such an op makes failed its load for want of a shape.
Each stand-in makes the op's outputs with the op's shapes and types, mixing along the axes the op
mixes along, so that the inference carries the batch's symbol through it and the reading reads it
as the ops it stands for. An op with no stand-in here keeps its node: on the batch's path, the
reading takes it as mixing (onnx_foreign_ops.py). The model onnxruntime runs is not changed.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import onnx
from onnx import TensorProto

from server.backends.function_inlining import inlined
from server.backends.graph_names import ONNX_DOMAIN, attribute, default_opset, graphs, int_attribute
from server.backends.onnx_stand_in_maker import Known, Maker, attributes, known_of
from server.backends.onnx_stand_ins_contrib import CONTRIB_BUILDERS, ML_BUILDERS

MS = "com.microsoft"
LAYER_NORM_OPSET = 17  # ONNX's LayerNormalization; onnxruntime runs it in ONNX's domain below too
EINSUM_OPSET = 12
CONV_ATTRIBUTES = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")
POOL_ATTRIBUTES = ("auto_pad", "ceil_mode", "kernel_shape", "pads", "strides")
Reads = dict[str, tuple[str, ...]]  # a stand-in's output -> inputs of the op it stands for it does not read
Rows = dict[str, tuple[tuple[str, int, bool], ...]]  # a stand-in's output -> inputs read by rows on an axis


@dataclass
class StandIns:
    """What the reading needs to know of the stand-ins besides their nodes."""

    reads: Reads = field(default_factory=dict)  # their mixing inherited all the same
    rows: Rows = field(default_factory=dict)  # each must carry the batch on that axis alone


Builder = Callable[[Maker], bool]  # adds the stand-in's nodes; False: none can stand in


def _unary(maker: Maker) -> bool:
    """Elementwise on its first input (Gelu, QuickGelu, QLinearSigmoid: scales and zero points whole)."""
    maker.add("Identity", maker.inputs(0), maker.output(0))
    return maker.outputs_used() == 1


def _added(maker: Maker) -> bool:
    """Elementwise on its inputs broadcast together (FastGelu's, BiasGelu's and BiasAdd's biases)."""
    present = [name for name in maker.node.input if name]
    total = present[0]
    for k, name in enumerate(present[1:], start=2):
        total = maker.add("Add", [total, name], maker.output(0) if k == len(present) else None)
    if len(present) == 1:
        maker.add("Identity", [total], maker.output(0))
    return maker.outputs_used() == 1


def _paired(maker: Maker) -> bool:
    """QLinearAdd and QLinearMul: A (input 0) and B (input 3) broadcast together, of one type."""
    a, b = maker.inputs(0, 3)
    maker.where(a, b, maker.output(0))
    return maker.outputs_used() == 1


def _skip_normalised(maker: Maker) -> bool:
    """SkipLayerNormalization (input, skip, gamma, beta, bias) and its simplified form (input, skip,
    gamma, bias): (input + skip + bias) normalised along the last axis, scaled; outputs: that, the
    sum's mean and inverse deviation, the sum."""
    simplified = maker.node.op_type.startswith("SkipSimplified")
    bias = maker.inputs(3 if simplified else 4)[0]
    summed = maker.add("Add", maker.inputs(0, 1))
    if bias:
        summed = maker.add("Add", [summed, bias])
    maker.scaled(maker.spread(summed, [-1]), maker.inputs(2)[0], "" if simplified else maker.inputs(3)[0])
    for k in (1, 2):
        if (out := maker.output(k)) is not None:
            maker.statistic(summed, [-1], out)
    if maker.output(3):
        maker.add("Identity", [summed], maker.output(3))
    return True


def _normalised(maker: Maker) -> bool:
    """LayerNormalization (below opset 17: X, Scale, B) and SimplifiedLayerNormalization (X, scale):
    along its axes from `axis` to the last; outputs: that, then its statistics."""
    axis = int_attribute(maker.node, "axis", -1)
    rank = maker.known.rank(maker.node.input[0])
    if axis < 0:
        axes = list(range(axis, 0))
    elif rank is not None:
        axes = [a - rank for a in range(axis, rank)]
    else:
        return False
    simplified = maker.node.op_type == "SimplifiedLayerNormalization"
    maker.scaled(
        maker.spread(maker.node.input[0], axes), maker.inputs(1)[0], "" if simplified else maker.inputs(2)[0]
    )
    for k in range(1, len(maker.node.output)):
        if (out := maker.output(k)) is not None:
            maker.statistic(maker.node.input[0], axes, out)
    return True


def _fused_conv(maker: Maker) -> bool:
    """FusedConv: a Conv (its activation elementwise after), plus a sum input Z added."""
    present = [name for name in maker.inputs(0, 1, 2) if name]
    z = maker.inputs(3)[0]
    conv = maker.add(
        "Conv", present, None if z else maker.output(0), **attributes(maker.node, CONV_ATTRIBUTES)
    )
    if z:
        maker.add("Add", [conv, z], maker.output(0))
    return maker.outputs_used() == 1


def _fused_gemm(maker: Maker) -> bool:
    """FusedGemm: a Gemm, its activation elementwise after."""
    kept = attributes(maker.node, ("transA", "transB"))
    maker.add("Gemm", [name for name in maker.node.input if name], maker.output(0), **kept)
    return maker.outputs_used() == 1


def _fused_matmul(maker: Maker) -> bool:
    """FusedMatMul (and TransposeMatMul): a MatMul of its inputs, each with its last two axes swapped
    where asked: by an Einsum over `...` (opset 12 on: onnxruntime fuses q @ k^T of activations, their
    rank unknown here), else a Transpose where the rank is known (a weight's). Batch-axis transposes
    are not read."""
    if any(int_attribute(maker.node, name, 0) for name in ("transBatchA", "transBatchB")):
        return False
    a, b = maker.inputs(0, 1)
    swap_a, swap_b = (int_attribute(maker.node, flag, 0) for flag in ("transA", "transB"))
    if (swap_a or swap_b) and maker.opset >= EINSUM_OPSET:
        equation = f"...{'ji' if swap_a else 'ij'},...{'kj' if swap_b else 'jk'}->...ik"
        maker.add("Einsum", [a, b], maker.output(0), equation=equation)
        return maker.outputs_used() == 1
    operands = []
    for name, swap in ((a, swap_a), (b, swap_b)):
        if swap:
            rank = maker.known.rank(name)
            if rank is None or rank < 2:
                return False
            name = maker.transposed(name, rank)
        operands.append(name)
    maker.add("MatMul", operands, maker.output(0))
    return maker.outputs_used() == 1


def _qgemm(maker: Maker) -> bool:
    """QGemm (A, a_scale, a_zero, B, b_scale, b_zero, C, y_scale, y_zero): a Gemm of A and B, in
    y_zero's type where it has one (else float)."""
    a, b, c, y_zero = maker.inputs(0, 3, 6, 8)
    kept = attributes(maker.node, ("transA", "transB"))
    operands = maker.floats([a, b] + ([c] if c else []))
    if not y_zero:
        maker.add("Gemm", operands, maker.output(0), **kept)
        return maker.outputs_used() == 1
    kind = maker.known.types.get(y_zero)
    if kind is None:
        return False
    maker.add("Cast", [maker.add("Gemm", operands, **kept)], maker.output(0), to=kind)
    return maker.outputs_used() == 1


def _integer_matmul(maker: Maker) -> bool:
    """MatMulIntegerToFloat (A, B, a_scale, ...; bias 6) and DynamicQuantizeMatMul (A, B, b_scale,
    b_zero, bias): a float MatMul of A and B in the scale's type (DynamicQuantizeMatMul's batch-wide
    scale is made per row at load: row_quantization.py); MatMulInteger16: an int32 MatMul."""
    a, b = maker.inputs(0, 1)
    if maker.node.op_type == "MatMulInteger16":
        operands = [maker.add("Cast", [name], to=TensorProto.INT32) for name in (a, b)]
        maker.add("MatMul", operands, maker.output(0))
        return maker.outputs_used() == 1
    fused = maker.node.op_type == "DynamicQuantizeMatMul"
    scale, bias = maker.inputs(2, 4 if fused else 6)
    kind = maker.known.types.get(scale, TensorProto.FLOAT)
    product = maker.add("MatMul", maker.floats([a, b]))
    if bias:
        product = maker.add("Add", [product, *maker.floats([bias])])
    maker.add("Cast", [product], maker.output(0), to=kind)
    return maker.outputs_used() == 1


def _qconcat(maker: Maker) -> bool:
    """QLinearConcat (y_scale, y_zero, then X, x_scale, x_zero for each input): a Concat of the Xs."""
    tensors = list(maker.node.input[2::3])
    maker.add("Concat", tensors, maker.output(0), axis=int_attribute(maker.node, "axis", 0))
    return maker.outputs_used() == 1


def _qsoftmax(maker: Maker) -> bool:
    """QLinearSoftmax: along `axis` (its `opset` below 13: from `axis` to the last, as Softmax did,
    read by a Flatten there and a Reshape back to the input's shape)."""
    axis = int_attribute(maker.node, "axis", -1)
    x = maker.node.input[0]
    if int_attribute(maker.node, "opset", 13) >= 13 or axis == -1:
        maker.spread(x, [axis], maker.output(0))
    else:
        flat = maker.spread(maker.add("Flatten", [x], axis=axis), [1])
        maker.add("Reshape", [flat, maker.add("Shape", [x])], maker.output(0))
    return maker.outputs_used() == 1


def _qreduce(maker: Maker) -> bool:
    """QLinearReduceMean: over its `axes` (every axis where it names none, as ReduceMean)."""
    axes = attribute(maker.node, "axes", None)
    keep = int_attribute(maker.node, "keepdims", 1)
    x = maker.node.input[0]
    if isinstance(axes, list) and axes:
        maker.reduce("ReduceMax", x, axes, maker.output(0), keepdims=keep)
    else:
        maker.add("ReduceMax", [x], maker.output(0), keepdims=keep)
    return maker.outputs_used() == 1


def _qpool(maker: Maker) -> bool:
    """QLinearAveragePool and QLinearGlobalAveragePool in channels-first layout: the pool on the
    input as float, cast to y_zero's type (channels-last: not read)."""
    if int_attribute(maker.node, "channels_last", 0):
        return False
    y_zero, x = maker.inputs(4, 0)
    kind = maker.known.types.get(y_zero or x)  # no zero point: the input's type
    if kind is None:
        return False
    floats = maker.floats([x])
    if maker.node.op_type == "QLinearGlobalAveragePool":
        pooled = maker.add("GlobalAveragePool", floats)
    else:
        pooled = maker.add("AveragePool", floats, **attributes(maker.node, POOL_ATTRIBUTES))
    maker.add("Cast", [pooled], maker.output(0), to=kind)
    return maker.outputs_used() == 1


def _quantization(maker: Maker) -> bool:
    """com.microsoft's QuantizeLinear and DequantizeLinear: ONNX's (elementwise; scales whole)."""
    if maker.opset < 10:
        return False
    kept = {"axis": attribute(maker.node, "axis", 1)} if maker.opset >= 13 else {}
    maker.add(maker.node.op_type, list(maker.node.input), maker.output(0), **kept)
    return maker.outputs_used() == 1


BUILDERS: dict[tuple[str, str], Builder] = {
    **{(MS, op): _unary for op in ("Gelu", "QuickGelu", "QLinearSigmoid", "QLinearLeakyRelu")},
    **{(MS, op): _added for op in ("FastGelu", "BiasGelu", "BiasAdd")},
    **{(MS, op): _paired for op in ("QLinearAdd", "QLinearMul")},
    **{(MS, op): _skip_normalised for op in ("SkipLayerNormalization", "SkipSimplifiedLayerNormalization")},
    ("", "SimplifiedLayerNormalization"): _normalised,
    (MS, "FusedConv"): _fused_conv,
    (MS, "FusedGemm"): _fused_gemm,
    **{(MS, op): _fused_matmul for op in ("FusedMatMul", "TransposeMatMul")},
    (MS, "QGemm"): _qgemm,
    **{
        (MS, op): _integer_matmul
        for op in ("MatMulIntegerToFloat", "MatMulInteger16", "DynamicQuantizeMatMul")
    },
    (MS, "QLinearConcat"): _qconcat,
    (MS, "QLinearSoftmax"): _qsoftmax,
    (MS, "QLinearReduceMean"): _qreduce,
    **{(MS, op): _qpool for op in ("QLinearAveragePool", "QLinearGlobalAveragePool")},
    **{(MS, op): _quantization for op in ("QuantizeLinear", "DequantizeLinear")},
    **{(MS, op): build for op, build in CONTRIB_BUILDERS.items()},
    **{("ai.onnx.ml", op): build for op, build in ML_BUILDERS.items()},
}


def stood_in(probe: onnx.ModelProto) -> tuple[onnx.ModelProto, StandIns]:
    """`probe` with its model-local functions inlined (a function's ops are stood in for too), then
    its stand-ins in, at the opset onnxruntime reads it at; and what the stand-ins do not read."""
    if probe.functions:
        probe = inlined(probe)
    return probe, with_stand_ins(probe, default_opset(probe) or 1)


def with_stand_ins(probe: onnx.ModelProto, opset: int) -> StandIns:
    """Each op of `probe` (at any depth) that BUILDERS reads, its node replaced by its stand-in's;
    returns, per stand-in output, the op's inputs the stand-in does not read (their mixing is
    inherited all the same) and those the op reads by each batch row's place on an axis."""
    found = StandIns()
    if not any(_builder(node, opset) for graph in graphs(probe.graph) for node in graph.node):
        return found  # most graphs: nothing to stand in for, nothing read of their tensors
    known = known_of(probe)
    counter = itertools.count()
    for graph in reversed(list(graphs(probe.graph))):  # bodies first: their node is copied after
        makers = {
            k: made for k, node in enumerate(graph.node) if (made := _stand_in(node, opset, known, counter))
        }
        if not makers:
            continue
        for maker in makers.values():
            read = {name for new in maker.nodes for name in new.input}
            unread = tuple(name for name in maker.node.input if name and name not in read)
            outputs = [out for out in maker.node.output if out]
            found.reads.update({out: unread for out in outputs if unread})
            found.rows.update({out: tuple(maker.per_row) for out in outputs if maker.per_row})
        nodes = [
            new
            for k, node in enumerate(graph.node)
            for new in (makers[k].nodes if k in makers else [_copy(node)])
        ]
        graph.ClearField("node")
        graph.node.extend(nodes)
    return found


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    copied = onnx.NodeProto()
    copied.CopyFrom(node)
    return copied


def _stand_in(node: onnx.NodeProto, opset: int, known: Known, counter: Iterator[int]) -> Maker | None:
    builder = _builder(node, opset)
    if builder is None or not node.output:
        return None
    maker = Maker(node, opset, known, counter)
    return maker if builder(maker) else None


def _builder(node: onnx.NodeProto, opset: int) -> Builder | None:
    domain = "" if node.domain in ONNX_DOMAIN else node.domain
    if (domain, node.op_type) == ("", "LayerNormalization"):
        return _normalised if opset < LAYER_NORM_OPSET else None
    return BUILDERS.get((domain, node.op_type))
