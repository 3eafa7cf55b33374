"""The custom corpus of scripts/row_mixing_sweep.py (`--corpus custom`): graphs with ops outside
ONNX's own domain (com.microsoft, com.microsoft.nchwc, ai.onnx.ml), made the way users get them
(onnxruntime's offline optimizer, onnxruntime.quantization) and written directly. Each name ends in
_rowwise (rows stay apart: must batch and answer right) or _mixing (rows mix: must be refused
batching, or answer each request as alone). Written by a tester in session 56, when 31 of them had
loaded batched and mixed four clients' rows, OK.

    custom_sources() -> list[Source]   (row_mixing_cases.Source; inputs have 4 rows in dim 0)
    declared(case) -> Case             (its outputs' shapes declared, as optimizers save them)
"""

from __future__ import annotations

import copy
import logging
import os
import sys
import tempfile
import warnings
from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper
from row_mixing_cases import Case, Source

F, I8, U8, I32, I64 = T.FLOAT, T.INT8, T.UINT8, T.INT32, T.INT64
MS, ML = "com.microsoft", "ai.onnx.ml"
OPSETS = [h.make_opsetid("", 17), h.make_opsetid(MS, 1), h.make_opsetid(ML, 3)]


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def vi(name: str, elem: int, shape) -> onnx.ValueInfoProto:
    return h.make_tensor_value_info(name, elem, shape)


def init(name: str, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def model(nodes, inputs, outputs, inits=(), opset=17) -> onnx.ModelProto:
    graph = h.make_graph(list(nodes), "g", list(inputs), list(outputs), list(inits))
    opsets = [h.make_opsetid("", opset), h.make_opsetid(MS, 1), h.make_opsetid(ML, 3)]
    m = h.make_model(graph, opset_imports=opsets)
    m.ir_version = 8
    return m


def ms(op, inputs, outputs, **attrs) -> onnx.NodeProto:
    return h.make_node(op, inputs, outputs, domain=MS, **attrs)


def ml(op, inputs, outputs, **attrs) -> onnx.NodeProto:
    return h.make_node(op, inputs, outputs, domain=ML, **attrs)


def n(op, inputs, outputs, **attrs) -> onnx.NodeProto:
    return h.make_node(op, inputs, outputs, **attrs)


def f32(seed: int, *shape, scale: float = 1.0) -> np.ndarray:
    return (scale * _rng(seed).standard_normal(shape)).astype(np.float32)


def _ort_version() -> tuple[int, ...]:
    return tuple(int(part) for part in ort.__version__.split(".")[:2] if part.isdigit())


def _custom_ops(m: onnx.ModelProto) -> set[str]:
    return {f"{nd.domain}:{nd.op_type}" for nd in m.graph.node if nd.domain not in ("", "ai.onnx")}


def optimized(m: onnx.ModelProto, level: str, must: str) -> onnx.ModelProto:
    """The model as onnxruntime's offline optimizer saves it (CPU), checking that `must` (domain:op)
    is in the saved graph."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "opt.onnx")
        so = ort.SessionOptions()
        so.log_severity_level = 4
        so.graph_optimization_level = {
            "EXTENDED": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "ALL": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[level]
        so.optimized_model_filepath = out
        ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        got = onnx.load(out)
    if must not in _custom_ops(got):
        raise AssertionError(f"{must} not in the optimized graph: {sorted(_custom_ops(got))}")
    return got


class _Reader:
    def __init__(self, name: str, data: list[np.ndarray]) -> None:
        self.items = iter([{name: d} for d in data])

    def get_next(self):
        return next(self.items, None)


def quantized_static(
    m: onnx.ModelProto,
    x_name: str,
    calib: np.ndarray,
    fmt: str,
    must: str,
    then_optimize: bool = False,
    **extra,
) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "f.onnx"), os.path.join(tmp, "q.onnx")
        onnx.save(m, src)
        quantize_static(
            src,
            dst,
            _Reader(x_name, [calib[i : i + 1] for i in range(len(calib))]),
            quant_format=QuantFormat.QOperator if fmt == "QOperator" else QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            **extra,
        )
        q = onnx.load(dst)
    if then_optimize:
        return optimized(q, "EXTENDED", must)
    if must not in _custom_ops(q):
        raise AssertionError(f"{must} not in the quantized graph: {sorted(_custom_ops(q))}")
    return q


def quantized_dynamic(m: onnx.ModelProto, must: str) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "f.onnx"), os.path.join(tmp, "q.onnx")
        onnx.save(m, src)
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
        q = onnx.load(dst)
    return optimized(q, "EXTENDED", must)


# ---------------------------------------------------------------------------------------------
# Standard-op patterns that onnxruntime's optimizer fuses into com.microsoft ops


def _gelu_nodes(x: str, y: str, p: str) -> list[onnx.NodeProto]:
    return [
        n("Div", [x, "sqrt2"], [p + "d"]),
        n("Erf", [p + "d"], [p + "e"]),
        n("Add", [p + "e", "one"], [p + "a"]),
        n("Mul", [x, p + "a"], [p + "m"]),
        n("Mul", [p + "m", "half"], [y]),
    ]


GELU_INITS = [
    init("sqrt2", np.float32(np.sqrt(2))),
    init("one", np.float32(1)),
    init("half", np.float32(0.5)),
]


def _mix_tail(src: str, out: str, p: str = "mix") -> tuple[list, list]:
    """Standard ops that mix rows after a custom op: out = src - ReduceSum(src, axis 0)."""
    return [n("ReduceSum", [src, p + "ax"], [p + "s"], keepdims=1), n("Sub", [src, p + "s"], [out])], [
        init(p + "ax", np.array([0], np.int64))
    ]


def opt_gelu(mixing: bool) -> Source:
    x = f32(1, 4, 4)
    nodes, inits = _gelu_nodes("x", "g", "p"), list(GELU_INITS)
    if mixing:
        t, i = _mix_tail("g", "y")
        nodes += t
        inits += i
    else:
        nodes.append(n("Identity", ["g"], ["y"]))
    m = model(nodes, [vi("x", F, ["N", 4])], [vi("y", F, None)], inits)
    return Source(
        f"custom_opt_gelu_{'mixing' if mixing else 'rowwise'}",
        optimized(m, "EXTENDED", "com.microsoft:Gelu"),
        (x,),
    )


def opt_biasgelu(mixing: bool) -> Source:
    x = f32(2, 4, 3, 8)
    nodes = [n("MatMul", ["x", "W"], ["mm"]), n("Add", ["mm", "b"], ["ab"]), *_gelu_nodes("ab", "g", "p")]
    inits = [*GELU_INITS, init("W", f32(3, 8, 8)), init("b", f32(4, 8))]
    if mixing:
        nodes += [n("ReduceMean", ["g"], ["rm"], axes=[0], keepdims=1), n("Sub", ["g", "rm"], ["y"])]
    else:
        nodes.append(n("Identity", ["g"], ["y"]))
    m = model(nodes, [vi("x", F, ["N", 3, 8])], [vi("y", F, None)], inits, opset=17)
    # ReduceMean at opset 17 takes axes as an attribute
    return Source(
        f"custom_opt_biasgelu_{'mixing' if mixing else 'rowwise'}",
        optimized(m, "EXTENDED", "com.microsoft:BiasGelu"),
        (x,),
    )


def opt_quickgelu(mixing: bool) -> Source:
    x = f32(6, 4, 5)
    nodes = [n("Mul", ["x", "a"], ["xa"]), n("Sigmoid", ["xa"], ["s"]), n("Mul", ["x", "s"], ["g"])]
    inits = [init("a", np.float32(1.702))]
    if mixing:
        t, i = _mix_tail("g", "y")
        nodes += t
        inits += i
    else:
        nodes.append(n("Identity", ["g"], ["y"]))
    m = model(nodes, [vi("x", F, ["N", 5])], [vi("y", F, None)], inits)
    return Source(
        f"custom_opt_quickgelu_{'mixing' if mixing else 'rowwise'}",
        optimized(m, "EXTENDED", "com.microsoft:QuickGelu"),
        (x,),
    )


def opt_skiplayernorm(mixing: bool) -> Source:
    x, s = f32(7, 4, 3, 8), f32(8, 4, 3, 8)
    nodes = [
        n("Add", ["x", "s"], ["a"]),
        n("LayerNormalization", ["a", "gamma", "beta"], ["ln"], axis=-1, epsilon=1e-5),
    ]
    inits = [init("gamma", f32(9, 8)), init("beta", f32(10, 8))]
    if mixing:
        nodes += [n("ReduceMax", ["ln"], ["mx"], axes=[0], keepdims=1), n("Sub", ["ln", "mx"], ["y"])]
    else:
        nodes.append(n("Identity", ["ln"], ["y"]))
    m = model(nodes, [vi("x", F, ["N", 3, 8]), vi("s", F, ["N", 3, 8])], [vi("y", F, None)], inits)
    return Source(
        f"custom_opt_skiplayernorm_{'mixing' if mixing else 'rowwise'}",
        optimized(m, "EXTENDED", "com.microsoft:SkipLayerNormalization"),
        (x, s),
    )


def opt_transpose_matmul(mixing: bool) -> Source:
    if mixing:  # the Gram matrix over the batch: x^T x, [K, K]
        x = f32(11, 4, 5)
        nodes = [n("Transpose", ["x"], ["xt"], perm=[1, 0]), n("MatMul", ["xt", "x"], ["y"])]
        m = model(nodes, [vi("x", F, ["N", 5])], [vi("y", F, None)])
        return Source(
            "custom_opt_transpose_matmul_mixing", optimized(m, "EXTENDED", "com.microsoft:FusedMatMul"), (x,)
        )
    q, k = f32(12, 4, 3, 6), f32(13, 4, 5, 6)  # per-row scores q k^T
    nodes = [n("Transpose", ["k"], ["kt"], perm=[0, 2, 1]), n("MatMul", ["q", "kt"], ["y"])]
    m = model(nodes, [vi("q", F, ["N", 3, 6]), vi("k", F, ["N", 5, 6])], [vi("y", F, None)])
    return Source(
        "custom_opt_transpose_matmul_rowwise", optimized(m, "EXTENDED", "com.microsoft:FusedMatMul"), (q, k)
    )


def opt_matmul_scale(mixing: bool) -> Source:
    x = f32(14, 4, 6)
    if mixing:  # scaled x^T x
        nodes = [
            n("Transpose", ["x"], ["xt"], perm=[1, 0]),
            n("MatMul", ["xt", "x"], ["mm"]),
            n("Mul", ["mm", "sc"], ["y"]),
        ]
        inits = [init("sc", np.float32(0.125))]
    else:
        nodes = [n("MatMul", ["x", "W"], ["mm"]), n("Mul", ["mm", "sc"], ["y"])]
        inits = [init("W", f32(15, 6, 3)), init("sc", np.float32(0.125))]
    m = model(nodes, [vi("x", F, ["N", 6])], [vi("y", F, None)], inits)
    return Source(
        f"custom_opt_matmul_scale_{'mixing' if mixing else 'rowwise'}",
        optimized(m, "EXTENDED", "com.microsoft:FusedMatMul"),
        (x,),
    )


def opt_gemm_relu(mixing: bool) -> Source:
    x = f32(16, 4, 6)
    nodes = [n("Gemm", ["x", "W", "b"], ["gm"], transB=1), n("Relu", ["gm"], ["r"])]
    inits = [init("W", f32(17, 5, 6)), init("b", f32(18, 5))]
    if mixing:
        t, i = _mix_tail("r", "y")
        nodes += t
        inits += i
    else:
        nodes.append(n("Identity", ["r"], ["y"]))
    m = model(nodes, [vi("x", F, ["N", 6])], [vi("y", F, None)], inits)
    return Source(
        f"custom_opt_gemm_relu_{'mixing' if mixing else 'rowwise'}",
        optimized(m, "EXTENDED", "com.microsoft:FusedGemm"),
        (x,),
    )


def _convnet(mixing: bool, seed: int) -> onnx.ModelProto:
    nodes = [
        n("Conv", ["x", "W1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        n("Relu", ["c1"], ["r1"]),
        n("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        n("Conv", ["p1", "W2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        n("Relu", ["c2"], ["r2"]),
        n("GlobalAveragePool", ["r2"], ["gp"]),
        n("Flatten", ["gp"], ["fl"]),
    ]
    inits = [
        init("W1", f32(seed, 16, 3, 3, 3, scale=0.3)),
        init("b1", f32(seed + 1, 16)),
        init("W2", f32(seed + 2, 16, 16, 3, 3, scale=0.2)),
        init("b2", f32(seed + 3, 16)),
    ]
    if mixing:  # batch-statistics normalisation, as BatchNorm in training mode would
        nodes += [n("ReduceMean", ["fl"], ["mu"], axes=[0], keepdims=1), n("Sub", ["fl", "mu"], ["y"])]
    else:
        nodes.append(n("Identity", ["fl"], ["y"]))
    return model(nodes, [vi("x", F, ["N", 3, 8, 8])], [vi("y", F, None)], inits)


def opt_convnet(mixing: bool, level: str) -> Source:
    x = f32(20, 4, 3, 8, 8)
    m = _convnet(mixing, 21)
    must = "com.microsoft:FusedConv" if level == "EXTENDED" else "com.microsoft.nchwc:Conv"
    tag = "fusedconv" if level == "EXTENDED" else "nchwc"
    return Source(
        f"custom_opt_convnet_{tag}_{'mixing' if mixing else 'rowwise'}", optimized(m, level, must), (x,)
    )


def opt_nchwc_conv_mixing_axis() -> Source:
    """A conv net that folds the batch into channels (Reshape [1, N*C, H, W]) before its Conv:
    onnx infers the Reshape's output; the nchwc Conv after it is not read."""
    x = f32(22, 4, 4, 6, 6)
    nodes = [
        n("Transpose", ["x"], ["xt"], perm=[1, 0, 2, 3]),  # [C, N, H, W]: the batch as channels
        n("Conv", ["xt", "W", "b"], ["c"], pads=[1, 1, 1, 1]),
        n("Relu", ["c"], ["r"]),
        n("Transpose", ["r"], ["y"], perm=[1, 0, 2, 3]),
    ]
    # the Conv's weights need a fixed channel count: N is that count, so fix it with a group conv
    # instead over a fixed axis: use depthwise over the original channels after moving N to width
    nodes = [
        n("Transpose", ["x"], ["xt"], perm=[1, 2, 0, 3]),  # [C, H, N, W]
        n("Reshape", ["xt", "shp"], ["xr"]),  # [1, C, H, N*W]
        n("Conv", ["xr", "W", "b"], ["c"], pads=[1, 1, 1, 1]),
        n("Relu", ["c"], ["r"]),
        n("Reshape", ["r", "shp2"], ["r2"]),  # [8, H, N, W]
        n("Transpose", ["r2"], ["y"], perm=[2, 0, 1, 3]),  # [N, 8, H, W]
    ]
    inits = [
        init("shp", np.array([1, 4, 6, -1], np.int64)),
        init("shp2", np.array([8, 6, -1, 6], np.int64)),
        init("W", f32(23, 8, 4, 3, 3, scale=0.3)),
        init("b", f32(24, 8)),
    ]
    m = model(nodes, [vi("x", F, ["N", 4, 6, 6])], [vi("y", F, None)], inits)
    return Source(
        "custom_opt_conv_batch_in_width_nchwc_mixing", optimized(m, "ALL", "com.microsoft.nchwc:Conv"), (x,)
    )


# ---------------------------------------------------------------------------------------------
# onnxruntime.quantization


def _float_small_net(kind: str) -> tuple[onnx.ModelProto, np.ndarray]:
    x = f32(30, 4, 3, 6, 6)
    if kind == "conv_add_mul_concat_gap":
        nodes = [
            n("Conv", ["x", "W1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
            n("Relu", ["c1"], ["r1"]),
            n("Conv", ["x", "W2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
            n("Add", ["r1", "c2"], ["ad"]),
            n("Mul", ["ad", "c2"], ["mu"]),
            n("Concat", ["ad", "mu"], ["cc"], axis=1),
            n("GlobalAveragePool", ["cc"], ["gp"]),
            n("Flatten", ["gp"], ["y"]),
        ]
        inits = [
            init("W1", f32(31, 4, 3, 3, 3, scale=0.3)),
            init("b1", f32(32, 4)),
            init("W2", f32(33, 4, 3, 3, 3, scale=0.3)),
            init("b2", f32(34, 4)),
        ]
        return model(nodes, [vi("x", F, ["N", 3, 6, 6])], [vi("y", F, None)], inits, opset=13), x
    if kind == "conv_gap_mixing":  # the same, then the batch's mean subtracted (after the quantized part)
        nodes = [
            n("Conv", ["x", "W1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
            n("Relu", ["c1"], ["r1"]),
            n("Add", ["r1", "c1"], ["ad"]),
            n("GlobalAveragePool", ["ad"], ["gp"]),
            n("Flatten", ["gp"], ["fl"]),
            n("ReduceSum", ["fl", "ax0"], ["s"], keepdims=1),
            n("Sub", ["fl", "s"], ["y"]),
        ]
        inits = [
            init("W1", f32(31, 4, 3, 3, 3, scale=0.3)),
            init("b1", f32(32, 4)),
            init("ax0", np.array([0], np.int64)),
        ]
        return model(nodes, [vi("x", F, ["N", 3, 6, 6])], [vi("y", F, None)], inits, opset=13), x
    x = f32(35, 4, 8)
    if kind in ("mm_softmax_last", "mm_softmax_axis0"):
        axis = -1 if kind == "mm_softmax_last" else 0
        nodes = [
            n("MatMul", ["x", "W"], ["mm"]),
            n("Add", ["mm", "b"], ["ab"]),
            n("Softmax", ["ab"], ["y"], axis=axis),
        ]
        inits = [init("W", f32(36, 8, 5)), init("b", f32(37, 5))]
        return model(nodes, [vi("x", F, ["N", 8])], [vi("y", F, None)], inits, opset=13), x
    if kind in ("mm_sigmoid_leaky", "mm_sigmoid_leaky_mixing"):
        nodes = [
            n("MatMul", ["x", "W"], ["mm"]),
            n("Sigmoid", ["mm"], ["sg"]),
            n("LeakyRelu", ["mm"], ["lr"], alpha=0.1),
            n("Add", ["sg", "lr"], ["ad"]),
        ]
        inits = [init("W", f32(38, 8, 5))]
        if kind.endswith("mixing"):  # Concat over the batch with a fixed row: N+1 rows
            nodes += [n("Concat", ["ad", "row"], ["y"], axis=0)]
            inits.append(init("row", f32(39, 1, 5)))
        else:
            nodes.append(n("Identity", ["ad"], ["y"]))
        return model(nodes, [vi("x", F, ["N", 8])], [vi("y", F, None)], inits, opset=13), x
    if kind in ("mm_only", "mm_then_mixing"):
        nodes = [
            n("MatMul", ["x", "W"], ["mm"]),
            n("Add", ["mm", "b"], ["ab"]),
            n("Relu", ["ab"], ["r"]),
            n("MatMul", ["r", "W2"], ["y0"]),
        ]
        inits = [init("W", f32(40, 8, 16)), init("b", f32(41, 16)), init("W2", f32(42, 16, 4))]
        if kind == "mm_then_mixing":
            t, i = _mix_tail("y0", "y")
            nodes += t
            inits += i
        else:
            nodes.append(n("Identity", ["y0"], ["y"]))
        return model(nodes, [vi("x", F, ["N", 8])], [vi("y", F, None)], inits, opset=13), x
    raise ValueError(kind)


def quant_sources() -> list[Source]:
    out = []
    m, x = _float_small_net("conv_add_mul_concat_gap")
    calib = f32(50, 8, 3, 6, 6)
    out.append(
        Source(
            "custom_qstatic_qop_conv_add_mul_concat_gap_rowwise",
            quantized_static(m, "x", calib, "QOperator", "com.microsoft:QLinearConcat"),
            (x,),
        )
    )
    out.append(
        Source(
            "custom_qdq_opt_conv_add_mul_concat_gap_rowwise",
            quantized_static(m, "x", calib, "QDQ", "com.microsoft:QLinearAdd", then_optimize=True),
            (x,),
        )
    )
    m, x = _float_small_net("conv_gap_mixing")
    out.append(
        Source(
            "custom_qstatic_qop_conv_gap_then_batchsum_mixing",
            quantized_static(m, "x", calib, "QOperator", "com.microsoft:QLinearGlobalAveragePool"),
            (x,),
        )
    )
    out.append(
        Source(
            "custom_qdq_opt_conv_gap_then_batchsum_mixing",
            quantized_static(m, "x", calib, "QDQ", "com.microsoft:QLinearAdd", then_optimize=True),
            (x,),
        )
    )
    calib = f32(51, 8, 8)
    m, x = _float_small_net("mm_softmax_last")
    out.append(
        Source(
            "custom_qstatic_qop_softmax_last_rowwise",
            quantized_static(m, "x", calib, "QOperator", "com.microsoft:QLinearSoftmax"),
            (x,),
        )
    )
    m, x = _float_small_net("mm_softmax_axis0")
    out.append(
        Source(
            "custom_qstatic_qop_softmax_axis0_mixing",
            quantized_static(m, "x", calib, "QOperator", "com.microsoft:QLinearSoftmax"),
            (x,),
        )
    )
    m, x = _float_small_net("mm_sigmoid_leaky")
    out.append(
        Source(
            "custom_qstatic_qop_sigmoid_leaky_rowwise",
            quantized_static(m, "x", calib, "QOperator", "com.microsoft:QLinearSigmoid"),
            (x,),
        )
    )
    m, x = _float_small_net("mm_sigmoid_leaky_mixing")
    out.append(
        Source(
            "custom_qstatic_qop_sigmoid_leaky_concat_batch_mixing",
            quantized_static(m, "x", calib, "QOperator", "com.microsoft:QLinearLeakyRelu"),
            (x,),
        )
    )
    m, x = _float_small_net("mm_only")
    out.append(
        Source(
            "custom_qdynamic_opt_mlp_mixing",  # the activation's scale is the whole batch's
            quantized_dynamic(m, "com.microsoft:DynamicQuantizeMatMul"),
            (x,),
        )
    )
    m, x = _float_small_net("mm_then_mixing")
    out.append(
        Source(
            "custom_qdynamic_opt_mlp_then_batchsum_mixing",
            quantized_dynamic(m, "com.microsoft:DynamicQuantizeMatMul"),
            (x,),
        )
    )
    return out


# ---------------------------------------------------------------------------------------------
# com.microsoft ops written directly


def _q(seed: int, *shape) -> np.ndarray:
    return _rng(seed).integers(0, 256, shape).astype(np.uint8)


def direct_ms() -> list[Source]:
    S: list[Source] = []
    nh = 2
    # Attention: [N, S, H]
    x = f32(60, 4, 3, 8)
    inits = [init("Wqkv", f32(61, 8, 24, scale=0.3)), init("bqkv", f32(62, 24, scale=0.1))]
    m = model(
        [ms("Attention", ["x", "Wqkv", "bqkv"], ["y"], num_heads=nh)],
        [vi("x", F, ["N", 3, 8])],
        [vi("y", F, None)],
        inits,
    )
    S.append(Source("custom_attention_rowwise", m, (x,)))
    m = model(
        [
            n("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
            ms("Attention", ["xt", "Wqkv", "bqkv"], ["a"], num_heads=nh),
            n("Transpose", ["a"], ["y"], perm=[1, 0, 2]),
        ],
        [vi("x", F, ["N", 3, 8])],
        [vi("y", F, None)],
        inits,
    )
    S.append(Source("custom_attention_over_batch_mixing", m, (x,)))
    # MultiHeadAttention
    q, k, v = f32(63, 4, 3, 8), f32(64, 4, 5, 8), f32(65, 4, 5, 8)
    ins = [vi("q", F, ["N", 3, 8]), vi("k", F, ["N", 5, 8]), vi("v", F, ["N", 5, 8])]
    m = model([ms("MultiHeadAttention", ["q", "k", "v"], ["y"], num_heads=nh)], ins, [vi("y", F, None)])
    S.append(Source("custom_multiheadattention_rowwise", m, (q, k, v)))
    x = f32(66, 4, 3, 8)
    m = model(
        [
            n("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
            ms("MultiHeadAttention", ["xt", "xt", "xt"], ["a"], num_heads=nh),
            n("Transpose", ["a"], ["y"], perm=[1, 0, 2]),
        ],
        [vi("x", F, ["N", 3, 8])],
        [vi("y", F, None)],
    )
    S.append(Source("custom_multiheadattention_over_batch_mixing", m, (x,)))
    # EmbedLayerNormalization
    ids = _rng(67).integers(0, 10, (4, 5)).astype(np.int32)
    seg = _rng(68).integers(0, 2, (4, 5)).astype(np.int32)
    emb_inits = [
        init("wemb", f32(69, 10, 8)),
        init("pemb", f32(70, 6, 8)),
        init("semb", f32(71, 2, 8)),
        init("gamma", f32(72, 8)),
        init("beta", f32(73, 8)),
    ]
    ins = [vi("ids", I32, ["N", 5]), vi("seg", I32, ["N", 5])]
    m = model(
        [
            ms(
                "EmbedLayerNormalization",
                ["ids", "seg", "wemb", "pemb", "semb", "gamma", "beta"],
                ["e", "mi"],
                epsilon=1e-5,
            ),
            n("Identity", ["e"], ["y"]),
        ],
        ins,
        [vi("y", F, None)],
        emb_inits,
    )
    S.append(Source("custom_embedlayernorm_rowwise", m, (ids, seg)))
    t, i = _mix_tail("e", "y")
    m = model(
        [
            ms(
                "EmbedLayerNormalization",
                ["ids", "seg", "wemb", "pemb", "semb", "gamma", "beta"],
                ["e", "mi"],
                epsilon=1e-05,
            ),
            *t,
        ],
        ins,
        [vi("y", F, None)],
        emb_inits + i,
    )
    S.append(Source("custom_embedlayernorm_then_batchsum_mixing", m, (ids, seg)))
    # SkipLayerNormalization
    x, s = f32(74, 4, 3, 8), f32(75, 4, 3, 8)
    sl_inits = [init("gamma", f32(76, 8)), init("beta", f32(77, 8)), init("bias", f32(78, 8))]
    ins = [vi("x", F, ["N", 3, 8]), vi("s", F, ["N", 3, 8])]
    m = model(
        [ms("SkipLayerNormalization", ["x", "s", "gamma", "beta", "bias"], ["y"], epsilon=1e-5)],
        ins,
        [vi("y", F, None)],
        sl_inits,
    )
    S.append(Source("custom_skiplayernorm_rowwise", m, (x, s)))
    m = model(
        [
            n("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
            n("Transpose", ["s"], ["st"], perm=[1, 0, 2]),
            ms("SkipLayerNormalization", ["xt", "st", "gamma", "beta", "bias"], ["a"], epsilon=1e-5),
            n("ReduceMean", ["a"], ["y"], axes=[1], keepdims=0),
        ],
        ins,
        [vi("y", F, None)],
        sl_inits,
    )
    S.append(Source("custom_skiplayernorm_then_mean_over_batch_mixing", m, (x, s)))
    # FusedMatMul
    x = f32(79, 4, 6)
    m = model(
        [ms("FusedMatMul", ["x", "W"], ["y"], transB=1, alpha=0.5)],
        [vi("x", F, ["N", 6])],
        [vi("y", F, None)],
        [init("W", f32(80, 3, 6))],
    )
    S.append(Source("custom_fusedmatmul_transB_rowwise", m, (x,)))
    m = model([ms("FusedMatMul", ["x", "x"], ["y"], transA=1)], [vi("x", F, ["N", 6])], [vi("y", F, None)])
    S.append(Source("custom_fusedmatmul_transA_mixing", m, (x,)))
    x3 = f32(81, 4, 3, 6)
    m = model([ms("FusedMatMul", ["x", "x"], ["y"], transB=1)], [vi("x", F, ["N", 3, 6])], [vi("y", F, None)])
    S.append(Source("custom_fusedmatmul_batched_gram_rowwise", m, (x3,)))
    m = model(
        [ms("TransposeMatMul", ["x", "x"], ["y"], transA=1)], [vi("x", F, ["N", 6])], [vi("y", F, None)]
    )
    S.append(Source("custom_transposematmul_transA_mixing", m, (x,)))
    # FusedGemm
    gi = [init("W", f32(83, 5, 6)), init("b", f32(84, 5))]
    m = model(
        [ms("FusedGemm", ["x", "W", "b"], ["y"], transB=1, activation="Relu")],
        [vi("x", F, ["N", 6])],
        [vi("y", F, None)],
        gi,
    )
    S.append(Source("custom_fusedgemm_relu_rowwise", m, (x,)))
    m = model(
        [ms("FusedGemm", ["x", "x"], ["y"], transA=1, activation="LeakyRelu", activation_alpha=0.1)],
        [vi("x", F, ["N", 6])],
        [vi("y", F, None)],
    )
    S.append(Source("custom_fusedgemm_transA_mixing", m, (x,)))
    # FusedConv
    xc = f32(85, 4, 3, 6, 6)
    ci = [init("W", f32(86, 4, 3, 3, 3, scale=0.3)), init("b", f32(87, 4))]
    m = model(
        [ms("FusedConv", ["x", "W", "b"], ["y"], activation="Relu", pads=[1, 1, 1, 1], kernel_shape=[3, 3])],
        [vi("x", F, ["N", 3, 6, 6])],
        [vi("y", F, None)],
        ci,
    )
    S.append(Source("custom_fusedconv_relu_rowwise", m, (xc,)))
    m = model(
        [
            ms(
                "FusedConv", ["x", "W", "b"], ["c"], activation="Relu", pads=[1, 1, 1, 1], kernel_shape=[3, 3]
            ),
            n("BatchNormalization", ["c", "g", "bb", "mean", "var"], ["bn"], training_mode=0),
            n("ReduceMean", ["bn"], ["mu"], axes=[0, 2, 3], keepdims=1),
            n("Sub", ["bn", "mu"], ["y"]),
        ],
        [vi("x", F, ["N", 3, 6, 6])],
        [vi("y", F, None)],
        [
            *ci,
            init("g", np.ones(4, np.float32)),
            init("bb", np.zeros(4, np.float32)),
            init("mean", np.zeros(4, np.float32)),
            init("var", np.ones(4, np.float32)),
        ],
    )
    S.append(Source("custom_fusedconv_then_batch_mean_mixing", m, (xc,)))
    # QGemm (uint8 A, int8 B)
    a = _q(88, 4, 6)
    qi = [
        init("as", np.float32(0.02)),
        init("az", np.uint8(128)),
        init("B", _rng(89).integers(-60, 60, (6, 5)).astype(np.int8)),
        init("bs", np.float32(0.01)),
        init("bz", np.int8(0)),
        init("ys", np.float32(0.05)),
        init("yz", np.uint8(128)),
    ]
    m = model(
        [ms("QGemm", ["a", "as", "az", "B", "bs", "bz", "", "ys", "yz"], ["y"])],
        [vi("a", U8, ["N", 6])],
        [vi("y", U8, None)],
        qi,
    )
    S.append(Source("custom_qgemm_rowwise", m, (a,)))
    qi2 = [
        init("as", np.float32(0.02)),
        init("az", np.uint8(128)),
        init("bs", np.float32(0.02)),
        init("bz", np.uint8(128)),
    ]
    m = model(
        [ms("QGemm", ["a", "as", "az", "a", "bs", "bz"], ["y"], transA=1)],
        [vi("a", U8, ["N", 6])],
        [vi("y", F, None)],
        qi2,
    )
    S.append(Source("custom_qgemm_transA_mixing", m, (a,)))
    # QLinearSoftmax
    xs = _q(90, 4, 5)
    si = [
        init("xs", np.float32(0.05)),
        init("xz", np.uint8(128)),
        init("ys", np.float32(1 / 256)),
        init("yz", np.uint8(0)),
    ]
    for axis, tag in ((-1, "rowwise"), (0, "mixing")):
        m = model(
            [ms("QLinearSoftmax", ["x", "xs", "xz", "ys", "yz"], ["y"], axis=axis, opset=13)],
            [vi("x", U8, ["N", 5])],
            [vi("y", U8, None)],
            si,
        )
        S.append(Source(f"custom_qlinearsoftmax_axis{axis}_{tag}".replace("-", "m"), m, (xs,)))
    # QLinearConcat
    xa, xb = _q(91, 4, 3), _q(92, 4, 2)
    ci = [
        init("ys", np.float32(0.1)),
        init("yz", np.uint8(128)),
        init("as", np.float32(0.1)),
        init("az", np.uint8(128)),
        init("bs", np.float32(0.2)),
        init("bz", np.uint8(100)),
    ]
    m = model(
        [ms("QLinearConcat", ["ys", "yz", "a", "as", "az", "b", "bs", "bz"], ["y"], axis=1)],
        [vi("a", U8, ["N", 3]), vi("b", U8, ["N", 2])],
        [vi("y", U8, None)],
        ci,
    )
    S.append(Source("custom_qlinearconcat_axis1_rowwise", m, (xa, xb)))
    xb3 = _q(93, 4, 3)
    m = model(
        [
            ms("QLinearConcat", ["ys", "yz", "a", "as", "az", "b", "bs", "bz"], ["c"], axis=0),
            n("Slice", ["c", "st", "en", "axs"], ["y"]),
        ],
        [vi("a", U8, ["N", 3]), vi("b", U8, ["N", 3])],
        [vi("y", U8, None)],
        [
            *ci,
            init("st", np.array([1], np.int64)),
            init("en", np.array([1 << 30], np.int64)),
            init("axs", np.array([0], np.int64)),
        ],
    )
    S.append(Source("custom_qlinearconcat_axis0_slice_mixing", m, (xa, xb3)))
    # QLinearAdd / QLinearMul with a broadcast row, and over a batch-wide reduction
    ai = [
        init("as", np.float32(0.1)),
        init("az", np.uint8(128)),
        init("r", _q(94, 1, 3)),
        init("rs", np.float32(0.1)),
        init("rz", np.uint8(128)),
        init("cs", np.float32(0.2)),
        init("cz", np.uint8(128)),
    ]
    for op in ("QLinearAdd", "QLinearMul"):
        m = model(
            [ms(op, ["a", "as", "az", "r", "rs", "rz", "cs", "cz"], ["y"])],
            [vi("a", U8, ["N", 3])],
            [vi("y", U8, None)],
            ai,
        )
        S.append(Source(f"custom_{op.lower()}_rowwise", m, (xa,)))
    m = model(
        [
            n("ReduceMax", ["a"], ["am"], axes=[0], keepdims=1),
            ms("QLinearAdd", ["a", "as", "az", "am", "rs", "rz", "cs", "cz"], ["y"]),
        ],
        [vi("a", U8, ["N", 3])],
        [vi("y", U8, None)],
        ai,
    )
    S.append(Source("custom_qlinearadd_batch_max_mixing", m, (xa,)))
    # QLinearGlobalAveragePool, QLinearSigmoid
    xq = _q(95, 4, 3, 4, 4)
    pi = [
        init("xs", np.float32(0.05)),
        init("xz", np.uint8(128)),
        init("ys", np.float32(0.05)),
        init("yz", np.uint8(128)),
    ]
    m = model(
        [ms("QLinearGlobalAveragePool", ["x", "xs", "xz", "ys", "yz"], ["y"], channels_last=0)],
        [vi("x", U8, ["N", 3, 4, 4])],
        [vi("y", U8, None)],
        pi,
    )
    S.append(Source("custom_qlinearglobalavgpool_rowwise", m, (xq,)))
    m = model(
        [
            n("Transpose", ["x"], ["xt"], perm=[1, 0, 2, 3]),
            ms("QLinearGlobalAveragePool", ["xt", "xs", "xz", "ys", "yz"], ["g"], channels_last=1),
            n("Identity", ["g"], ["y"]),
        ],
        [vi("x", U8, ["N", 3, 4, 4])],
        [vi("y", U8, None)],
        pi,
    )
    S.append(Source("custom_qlinearglobalavgpool_channels_last_over_batch_mixing", m, (xq,)))
    m = model(
        [ms("QLinearSigmoid", ["x", "xs", "xz", "ys", "yz"], ["y"])],
        [vi("x", U8, ["N", 5])],
        [vi("y", U8, None)],
        pi,
    )
    S.append(Source("custom_qlinearsigmoid_rowwise", m, (xs,)))
    # Unique over the batch
    xu = np.array([3.0, 1.0, 3.0, 2.0], np.float32)
    m = model(
        [ms("Unique", ["x"], ["u", "idx", "cnt"])],
        [vi("x", F, ["N"])],
        [vi("u", F, None), vi("idx", I64, None), vi("cnt", I64, None)],
    )
    S.append(Source("custom_unique_mixing", m, (xu,)))
    m = model(
        [ms("Unique", ["x"], ["u", "idx", "cnt"]), n("Identity", ["idx"], ["y"])],
        [vi("x", F, ["N"])],
        [vi("y", I64, None)],
    )
    S.append(Source("custom_unique_index_only_mixing", m, (xu,)))
    # CDist
    x = f32(96, 4, 3)
    m = model(
        [ms("CDist", ["x", "C"], ["y"], metric="euclidean")],
        [vi("x", F, ["N", 3])],
        [vi("y", F, None)],
        [init("C", f32(97, 5, 3))],
    )
    S.append(Source("custom_cdist_to_centroids_rowwise", m, (x,)))
    m = model(
        [ms("CDist", ["x", "x"], ["y"], metric="sqeuclidean")], [vi("x", F, ["N", 3])], [vi("y", F, None)]
    )
    S.append(Source("custom_cdist_pairwise_batch_mixing", m, (x,)))
    # Inverse
    xi = f32(98, 4, 3, 3) + 3 * np.eye(3, dtype=np.float32)
    m = model([ms("Inverse", ["x"], ["y"])], [vi("x", F, ["N", 3, 3])], [vi("y", F, None)])
    S.append(Source("custom_inverse_rowwise", m, (xi,)))
    # (Inverse of the batch reshaped [-1, 4]: onnxruntime 1.31 segfaults on a non-square one-row input,
    # so no mixing source for Inverse.)
    # DynamicQuantizeMatMul: the activation's scale is over the whole input (the batch)
    x = f32(100, 4, 6)
    x[0] *= 8  # one request with a wide range
    di = [
        init("B", _rng(101).integers(-60, 60, (6, 5)).astype(np.int8)),
        init("bs", np.float32(0.01)),
        init("bz", np.int8(0)),
        init("bias", f32(102, 5)),
    ]
    m = model(
        [ms("DynamicQuantizeMatMul", ["x", "B", "bs", "bz", "bias"], ["y"])],
        [vi("x", F, ["N", 6])],
        [vi("y", F, None)],
        di,
    )
    S.append(Source("custom_dynamicquantizematmul_mixing", m, (x,)))
    # (Not [N, 3, 6]: a request of several rows has each row quantized on its own, README, so its
    # answer differs by rounding from onnxruntime's on the whole request.)
    # MatMulIntegerToFloat: given uint8 A and its scale, per row; after a DynamicQuantizeLinear,
    # batch-wide (made per row at load)
    a = _q(104, 4, 6)
    mi = [
        init("B", _q(105, 6, 5)),
        init("as", np.float32(0.02)),
        init("bs", np.float32(0.01)),
        init("az", np.uint8(128)),
        init("bz", np.uint8(128)),
        init("bias", f32(106, 5)),
    ]
    m = model(
        [ms("MatMulIntegerToFloat", ["a", "B", "as", "bs", "az", "bz", "bias"], ["y"])],
        [vi("a", U8, ["N", 6])],
        [vi("y", F, None)],
        mi,
    )
    S.append(Source("custom_matmulintegertofloat_rowwise", m, (a,)))
    x = f32(107, 4, 6)
    x[2] *= 8
    m = model(
        [
            n("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
            ms("MatMulIntegerToFloat", ["xq", "B", "xs", "bs", "xz", "bz", "bias"], ["y"]),
        ],
        [vi("x", F, ["N", 6])],
        [vi("y", F, None)],
        mi,
    )
    S.append(Source("custom_dql_matmulintegertofloat_mixing", m, (x,)))
    # BiasGelu, FastGelu, QuickGelu, Gelu
    x = f32(108, 4, 6)
    bi = [init("bias", f32(109, 6))]
    m = model([ms("BiasGelu", ["x", "bias"], ["y"])], [vi("x", F, ["N", 6])], [vi("y", F, None)], bi)
    S.append(Source("custom_biasgelu_rowwise", m, (x,)))
    t, i = _mix_tail("g", "y")
    m = model([ms("BiasGelu", ["x", "bias"], ["g"]), *t], [vi("x", F, ["N", 6])], [vi("y", F, None)], bi + i)
    S.append(Source("custom_biasgelu_then_batchsum_mixing", m, (x,)))
    m = model([ms("FastGelu", ["x", "bias"], ["y"])], [vi("x", F, ["N", 6])], [vi("y", F, None)], bi)
    S.append(Source("custom_fastgelu_rowwise", m, (x,)))
    m = model([ms("QuickGelu", ["x"], ["y"], alpha=1.702)], [vi("x", F, ["N", 6])], [vi("y", F, None)])
    S.append(Source("custom_quickgelu_rowwise", m, (x,)))
    m = model(
        [ms("Gelu", ["x"], ["g"]), n("Softmax", ["g"], ["y"], axis=0)],
        [vi("x", F, ["N", 6])],
        [vi("y", F, None)],
    )
    S.append(Source("custom_gelu_then_softmax_axis0_mixing", m, (x,)))
    m = model(
        [ms("Gelu", ["x"], ["g"]), n("CumSum", ["g", "ax"], ["y"])],
        [vi("x", F, ["N", 6])],
        [vi("y", F, None)],
        [init("ax", np.array(0, np.int64))],
    )
    S.append(Source("custom_gelu_then_cumsum_axis0_mixing", m, (x,)))
    # com.microsoft Pad / ExpandDims / GatherND / Trilu
    m = model(
        [ms("Pad", ["x", "pads"], ["y"], mode="constant")],
        [vi("x", F, ["N", 6])],
        [vi("y", F, None)],
        [init("pads", np.array([0, 1, 0, 1], np.int64))],
    )
    S.append(Source("custom_ms_pad_axis1_rowwise", m, (x,)))
    m = model(
        [ms("Pad", ["x", "pads"], ["p"], mode="edge"), n("Slice", ["p", "st", "en", "axs"], ["y"])],
        [vi("x", F, ["N", 6])],
        [vi("y", F, None)],
        [
            init("pads", np.array([1, 0, 0, 0], np.int64)),
            init("st", np.array([0], np.int64)),
            init("en", np.array([-1], np.int64)),
            init("axs", np.array([0], np.int64)),
        ],
    )
    S.append(Source("custom_ms_pad_edge_axis0_shift_mixing", m, (x,)))
    if _ort_version() >= (1, 31):  # onnxruntime 1.23 crashes opening com.microsoft's ExpandDims
        m = model(
            [ms("ExpandDims", ["x", "ax"], ["y"])],
            [vi("x", F, ["N", 6])],
            [vi("y", F, None)],
            [init("ax", np.array(1, np.int32))],
        )
        S.append(Source("custom_ms_expanddims_rowwise", m, (x,)))
        m = model(
            [ms("ExpandDims", ["x", "ax"], ["e"]), n("Softmax", ["e"], ["y"], axis=1)],
            [vi("x", F, ["N", 6])],
            [vi("y", F, None)],
            [init("ax", np.array(0, np.int32))],
        )
        S.append(Source("custom_ms_expanddims_axis0_then_softmax_mixing", m, (x,)))
    m = model(
        [ms("GatherND", ["x", "ind"], ["g"]), n("Add", ["x", "g"], ["y"])],
        [vi("x", F, ["N", 6])],
        [vi("y", F, None)],
        [init("ind", np.array([[0]], np.int64))],
    )
    S.append(Source("custom_ms_gathernd_first_row_mixing", m, (x,)))
    m = model([ms("Trilu", ["x"], ["y"], upper=1)], [vi("x", F, ["N", 3, 3])], [vi("y", F, None)])
    S.append(Source("custom_ms_trilu_rowwise", m, (xi,)))
    m = model([ms("Trilu", ["x"], ["y"], upper=1)], [vi("x", F, ["N", 6])], [vi("y", F, None)])
    S.append(Source("custom_ms_trilu_over_batch_mixing", m, (x,)))
    # GridSample (com.microsoft)
    xg = f32(110, 4, 2, 4, 4)
    grid = np.clip(f32(111, 4, 3, 3, 2, scale=0.5), -1, 1)
    m = model(
        [ms("GridSample", ["x", "grid"], ["y"], align_corners=0, mode="bilinear", padding_mode="zeros")],
        [vi("x", F, ["N", 2, 4, 4]), vi("grid", F, ["N", 3, 3, 2])],
        [vi("y", F, None)],
    )
    S.append(Source("custom_ms_gridsample_rowwise", m, (xg, grid)))
    return S


# ---------------------------------------------------------------------------------------------
# ai.onnx.ml


def direct_ml() -> list[Source]:
    S: list[Source] = []
    x = f32(120, 4, 4)
    x1 = f32(121, 4)
    fin, fout = [vi("x", F, ["N", 4])], [vi("y", F, None)]
    m = model([ml("Normalizer", ["x"], ["y"], norm="L2")], fin, fout)
    S.append(Source("custom_ml_normalizer_l2_rowwise", m, (x,)))
    m = model([ml("Normalizer", ["x"], ["y"], norm="L1")], [vi("x", F, ["N"])], fout)
    S.append(Source("custom_ml_normalizer_1d_over_batch_mixing", m, (x1,)))
    m = model(
        [
            n("Transpose", ["x"], ["xt"], perm=[1, 0]),
            ml("Normalizer", ["xt"], ["nt"], norm="MAX"),
            n("Transpose", ["nt"], ["y"], perm=[1, 0]),
        ],
        fin,
        fout,
    )
    S.append(Source("custom_ml_normalizer_columns_mixing", m, (x,)))
    m = model(
        [ml("Scaler", ["x"], ["y"], offset=[0.1, 0.2, 0.3, 0.4], scale=[2.0, 1.0, 0.5, 3.0])], fin, fout
    )
    S.append(Source("custom_ml_scaler_rowwise", m, (x,)))
    t, i = _mix_tail("s", "y")
    m = model(
        [ml("Scaler", ["x"], ["s"], offset=[0.1, 0.2, 0.3, 0.4], scale=[2.0, 1.0, 0.5, 3.0]), *t],
        fin,
        fout,
        i,
    )
    S.append(Source("custom_ml_scaler_then_batchsum_mixing", m, (x,)))
    coef = f32(122, 3 * 4).tolist()
    m = model(
        [
            ml(
                "LinearClassifier",
                ["x"],
                ["label", "prob"],
                coefficients=coef,
                intercepts=[0.1, -0.2, 0.3],
                classlabels_ints=[0, 1, 2],
                multi_class=0,
                post_transform="SOFTMAX",
            )
        ],
        fin,
        [vi("label", I64, None), vi("prob", F, None)],
    )
    S.append(Source("custom_ml_linearclassifier_rowwise", m, (x,)))
    m = model(
        [
            ml(
                "LinearClassifier",
                ["x"],
                ["label", "prob"],
                coefficients=coef,
                intercepts=[0.1, -0.2, 0.3],
                classlabels_ints=[0, 1, 2],
                multi_class=0,
                post_transform="NONE",
            ),
            n("Softmax", ["prob"], ["y"], axis=0),
        ],
        fin,
        fout,
    )
    S.append(Source("custom_ml_linearclassifier_then_softmax_axis0_mixing", m, (x,)))
    m = model(
        [
            ml(
                "LinearRegressor",
                ["x"],
                ["y"],
                coefficients=f32(123, 2 * 4).tolist(),
                intercepts=[0.5, -0.5],
                targets=2,
            )
        ],
        fin,
        fout,
    )
    S.append(Source("custom_ml_linearregressor_rowwise", m, (x,)))
    tree = dict(
        nodes_treeids=[0, 0, 0, 1, 1, 1],
        nodes_nodeids=[0, 1, 2, 0, 1, 2],
        nodes_featureids=[0, 0, 0, 2, 0, 0],
        nodes_values=[0.0, 0.0, 0.0, 0.3, 0.0, 0.0],
        nodes_modes=["BRANCH_LEQ", "LEAF", "LEAF", "BRANCH_LT", "LEAF", "LEAF"],
        nodes_truenodeids=[1, 0, 0, 1, 0, 0],
        nodes_falsenodeids=[2, 0, 0, 2, 0, 0],
    )
    m = model(
        [
            ml(
                "TreeEnsembleClassifier",
                ["x"],
                ["label", "prob"],
                **tree,
                class_treeids=[0, 0, 1, 1],
                class_nodeids=[1, 2, 1, 2],
                class_ids=[0, 1, 0, 1],
                class_weights=[0.8, 0.2, 0.3, 0.7],
                classlabels_int64s=[0, 1],
                post_transform="NONE",
            )
        ],
        fin,
        [vi("label", I64, None), vi("prob", F, None)],
    )
    S.append(Source("custom_ml_treeensembleclassifier_rowwise", m, (x,)))
    m = model(
        [
            ml(
                "TreeEnsembleRegressor",
                ["x"],
                ["y"],
                **tree,
                n_targets=1,
                target_treeids=[0, 0, 1, 1],
                target_nodeids=[1, 2, 1, 2],
                target_ids=[0, 0, 0, 0],
                target_weights=[1.0, -1.0, 0.5, 2.0],
            )
        ],
        fin,
        fout,
    )
    S.append(Source("custom_ml_treeensembleregressor_rowwise", m, (x,)))
    t, i = _mix_tail("r", "y")
    m = model(
        [
            ml(
                "TreeEnsembleRegressor",
                ["x"],
                ["r"],
                **tree,
                n_targets=1,
                target_treeids=[0, 0, 1, 1],
                target_nodeids=[1, 2, 1, 2],
                target_ids=[0, 0, 0, 0],
                target_weights=[1.0, -1.0, 0.5, 2.0],
            ),
            *t,
        ],
        fin,
        fout,
        i,
    )
    S.append(Source("custom_ml_treeensembleregressor_then_batchsum_mixing", m, (x,)))
    idx = [init("ind", np.array([0, 2], np.int64))]
    m = model([ml("ArrayFeatureExtractor", ["x", "ind"], ["y"])], fin, fout, idx)
    S.append(Source("custom_ml_arrayfeatureextractor_columns_rowwise", m, (x,)))
    idx0 = [init("ind0", np.array([0], np.int64))]
    m = model([ml("ArrayFeatureExtractor", ["x", "ind0"], ["y"])], [vi("x", F, ["N"])], fout, idx0)
    S.append(Source("custom_ml_arrayfeatureextractor_1d_mixing", m, (x1,)))
    m = model(
        [
            n("Transpose", ["x"], ["xt"], perm=[1, 0]),
            ml("ArrayFeatureExtractor", ["xt", "ind0"], ["a"]),
            n("Transpose", ["a"], ["at"], perm=[1, 0]),
            n("Sub", ["x", "at"], ["y"]),
        ],
        fin,
        fout,
        [*idx0, init("rep", np.array([2, 1], np.int64))],
    )
    S.append(Source("custom_ml_arrayfeatureextractor_rows_of_batch_mixing", m, (x,)))
    m = model([ml("Binarizer", ["x"], ["y"], threshold=0.1)], fin, fout)
    S.append(Source("custom_ml_binarizer_rowwise", m, (x,)))
    xn = x.copy()
    xn[1, 2] = np.nan
    m = model(
        [
            ml(
                "Imputer",
                ["x"],
                ["y"],
                imputed_value_floats=[0.0, 1.0, 2.0, 3.0],
                replaced_value_float=float("nan"),
            )
        ],
        fin,
        fout,
    )
    S.append(Source("custom_ml_imputer_rowwise", m, (xn,)))
    cat = _rng(124).integers(0, 4, (4, 1)).astype(np.int64)
    m = model(
        [ml("OneHotEncoder", ["c"], ["y"], cats_int64s=[0, 1, 2, 3], zeros=1)], [vi("c", I64, ["N", 1])], fout
    )
    S.append(Source("custom_ml_onehotencoder_rowwise", m, (cat,)))
    m = model(
        [
            ml(
                "LabelEncoder",
                ["c"],
                ["y"],
                keys_int64s=[0, 1, 2, 3],
                values_int64s=[10, 20, 30, 40],
                default_int64=-1,
            )
        ],
        [vi("c", I64, ["N", 1])],
        [vi("y", I64, None)],
    )
    S.append(Source("custom_ml_labelencoder_rowwise", m, (cat,)))
    xa, xb = f32(125, 4, 2), f32(126, 4, 3)
    m = model(
        [ml("FeatureVectorizer", ["a", "b"], ["y"], inputdimensions=[2, 3])],
        [vi("a", F, ["N", 2]), vi("b", F, ["N", 3])],
        fout,
    )
    S.append(Source("custom_ml_featurevectorizer_rowwise", m, (xa, xb)))
    m = model(
        [
            ml(
                "SVMRegressor",
                ["x"],
                ["y"],
                kernel_type="RBF",
                kernel_params=[0.5, 0.0, 3.0],
                n_supports=3,
                support_vectors=f32(127, 3 * 4).tolist(),
                coefficients=[0.5, -1.0, 0.7],
                rho=[0.1],
            )
        ],
        fin,
        fout,
    )
    S.append(Source("custom_ml_svmregressor_rowwise", m, (x,)))
    return S


def custom_sources() -> list[Source]:
    """Every source, sorted by name."""
    quiet = logging.root.manager.disable  # onnxruntime.quantization's advice, once per model
    logging.disable(logging.WARNING)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        found: list[Source] = []
        makers = [
            lambda m=m, f=f: f(m)
            for m in (False, True)
            for f in (
                opt_gelu,
                opt_biasgelu,
                opt_quickgelu,
                opt_skiplayernorm,
                opt_transpose_matmul,
                opt_matmul_scale,
                opt_gemm_relu,
                lambda mix: opt_convnet(mix, "EXTENDED"),
                lambda mix: opt_convnet(mix, "ALL"),
            )
        ]
        makers += [opt_nchwc_conv_mixing_axis, quant_sources, direct_ms, direct_ml]
        for make in makers:
            try:
                got = make()
            except Exception as err:
                print(f"custom_op_cases: a builder failed: {type(err).__name__}: {err}", file=sys.stderr)
                continue
            found += got if isinstance(got, list) else [got]
    names = [s.name for s in found]
    assert len(names) == len(set(names)), "duplicate names"
    logging.disable(quiet)
    return sorted(found, key=lambda s: s.name)


def declared(case: Case) -> Case:
    """The case with its outputs' shapes declared as optimizers and exporters save them, read from
    onnxruntime's runs at 1 row and at 4 rows: the batch's axis 'N', the other dims fixed where the
    two agree, named where they do not."""
    so = ort.SessionOptions()
    so.log_severity_level = 4
    session = ort.InferenceSession(case.model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    merged = {k: np.concatenate([r.feeds[k] for r in case.requests]) for k in case.requests[0].feeds}
    try:
        four = [np.asarray(o) for o in session.run(None, merged)]
    except Exception:
        four = [None] * len(case.outputs)
    one = case.requests[0].expected
    model = copy.deepcopy(case.model)
    for out, a, b in zip(model.graph.output, one, four, strict=False):
        t = out.type.tensor_type
        t.ClearField("shape")
        if b is not None and b.ndim != a.ndim:
            b = None
        for i, size in enumerate(a.shape):
            d = t.shape.dim.add()
            if b is not None and i == 0 and size == 1 and b.shape[0] == len(case.requests):
                d.dim_param = "N"
            elif b is not None and b.shape[i] == size:
                d.dim_value = size
            else:
                d.dim_param = f"{out.name}_d{i}"
    return replace(case, model=model)


if __name__ == "__main__":
    import time

    t0 = time.monotonic()
    srcs = custom_sources()
    print(f"{len(srcs)} sources in {time.monotonic() - t0:.1f} s")
    for s in srcs:
        print(s.name, sorted(_custom_ops(s.model)), [x.shape for x in s.inputs or ()])
