"""The nodes of per-row dynamic quantization (row_quantization.py): each row's DynamicQuantizeLinear,
and integer matmuls that take each row's zero point.

onnxruntime's MatMulInteger takes one zero point for A (a per-row one is refused: "input1 zero point
must be a scalar or 1D tensor of size 1"), so it runs without one, and each row's zero point times
the column sums of B (less B's zero point) is subtracted after it: (q - zp) . (B - bz) =
q . (B - bz) - zp * colsum(B - bz), exact in int32.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from batcher.types import Array

REDUCE_AXES_AS_INPUT = 18  # ReduceMin/ReduceMax take `axes` as an input from opset 18
PER_AXIS_QUANTIZE = 13  # QuantizeLinear takes a 1-D scale along `axis` from opset 13


class RowNodes:
    """Nodes and initializers for one quantized input, their names under `tag` (unused in the graph)."""

    def __init__(self, graph: onnx.GraphProto, opset: int, tag: str) -> None:
        self._graph = graph
        self._opset = opset
        self._tag = tag
        self._matmuls = 0
        self.nodes: list[onnx.NodeProto] = []

    def name(self, what: str) -> str:
        return f"{self._tag}{what}"

    def _const(self, what: str, value: Array) -> str:
        self._graph.initializer.append(numpy_helper.from_array(value, self.name(what)))
        return self.name(what)

    def _node(self, op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    def quantize_rows(self, x: str, q: str, scale: str) -> str:
        """DynamicQuantizeLinear over each row of `x` (its last axis) into `q` (uint8) and `scale`
        ([..., 1]); the name of each row's zero point as int32. Its arithmetic: scale = (max(x, 0)
        - min(x, 0)) / 255 (1 for a row of zeros, as onnxruntime's), zero point = saturate(round(
        -min / scale)), q = saturate(round(x / scale) + zero point), rounding half to even."""
        zero = self._const("zero", np.array(0, np.float32))
        one = self._const("one", np.array(1, np.float32))
        top = self._const("qmax", np.array(255, np.float32))
        if self._opset >= REDUCE_AXES_AS_INPUT:
            axes = self._const("axes", np.array([-1], np.int64))
            lo = self._node("ReduceMin", [x, axes], self.name("lo"), keepdims=1)
            hi = self._node("ReduceMax", [x, axes], self.name("hi"), keepdims=1)
        else:
            lo = self._node("ReduceMin", [x], self.name("lo"), axes=[-1], keepdims=1)
            hi = self._node("ReduceMax", [x], self.name("hi"), axes=[-1], keepdims=1)
        lo = self._node("Min", [lo, zero], self.name("lo0"))
        hi = self._node("Max", [hi, zero], self.name("hi0"))
        step = self._node("Div", [self._node("Sub", [hi, lo], self.name("span")), top], self.name("step"))
        flat = self._node("Equal", [step, zero], self.name("flat"))
        self._node("Where", [flat, one, step], scale)
        shift = self._node(
            "Sub", [zero, self._node("Div", [lo, scale], self.name("lo_steps"))], self.name("zp_exact")
        )
        zp = self._node(
            "Clip", [self._node("Round", [shift], self.name("zp_round")), zero, top], self.name("zp")
        )
        if self._opset >= PER_AXIS_QUANTIZE:
            self._quantize_one_pass(x, q, scale, zp)
        else:
            steps = self._node(
                "Round", [self._node("Div", [x, scale], self.name("x_steps"))], self.name("x_round")
            )
            added = self._node("Add", [steps, zp], self.name("x_zp"))
            clipped = self._node("Clip", [added, zero, top], self.name("x_clip"))
            self._node("Cast", [clipped], q, to=TensorProto.UINT8)
        return self._node("Cast", [zp], self.name("zp32"), to=TensorProto.INT32)

    def _quantize_one_pass(self, x: str, q: str, scale: str, zp: str) -> None:
        """QuantizeLinear over x as rows [R, K] with one scale and zero point a row (axis 0): one pass
        over x where Div, Round, Add, Clip and Cast took five (the same rounding and saturation)."""
        flat = self._const("flat_rows", np.array([-1], np.int64))
        last = self._const("last", np.array([-1], np.int64))
        end = self._const("end", np.array([np.iinfo(np.int64).max], np.int64))
        shape = self._node("Shape", [x], self.name("x_shape"))
        width = self._node("Slice", [shape, last, end], self.name("x_width"))
        rows_shape = self._node("Concat", [flat, width], self.name("rows_shape"), axis=0)
        rows = self._node("Reshape", [x, rows_shape], self.name("x_rows"))
        row_scale = self._node("Reshape", [scale, flat], self.name("row_scale"))
        row_zp = self._node(
            "Reshape",
            [self._node("Cast", [zp], self.name("zp_u8"), to=TensorProto.UINT8), flat],
            self.name("row_zp"),
        )
        quantized = self._node("QuantizeLinear", [rows, row_scale, row_zp], self.name("q_rows"), axis=0)
        self._node("Reshape", [quantized, shape], q)

    def int_matmul(
        self, q: str, b: onnx.TensorProto, b_zero: onnx.TensorProto | None, zp32: str, out: str
    ) -> str:
        """`out` = (q - each row's zero point) . (B - B's zero point), int32."""
        self._matmuls += 1
        m = f"m{self._matmuls}/"
        weights = numpy_helper.to_array(b).astype(np.int64)
        if b_zero is not None:
            weights = weights - numpy_helper.to_array(b_zero).astype(np.int64)
        colsum = self._const(f"{m}colsum", weights.sum(axis=0).astype(np.int32))
        raw = self._node(
            "MatMulInteger", [q, b.name, "", b_zero.name if b_zero else ""], self.name(f"{m}raw")
        )
        shift = self._node("Mul", [zp32, colsum], self.name(f"{m}shift"))
        return self._node("Sub", [raw, shift], out)

    def float_matmul(
        self,
        q: str,
        scale: str,
        zp32: str,
        b: onnx.TensorProto,
        b_scale: str,
        b_zero: onnx.TensorProto | None,
        bias: str,
        out: str,
    ) -> str:
        """onnxruntime's MatMulIntegerToFloat with each row's scale and zero point: `out` =
        float((q - zp) . (B - bz)) * (scale * b_scale) (+ bias)."""
        acc = self.int_matmul(q, b, b_zero, zp32, self.name(f"m{self._matmuls + 1}/acc"))
        m = f"m{self._matmuls}/"
        product = self._node("Cast", [acc], self.name(f"{m}acc_f"), to=TensorProto.FLOAT)
        scales = self._node("Mul", [scale, b_scale], self.name(f"{m}scales"))
        if not bias:
            return self._node("Mul", [product, scales], out)
        return self._node("Add", [self._node("Mul", [product, scales], self.name(f"{m}scaled")), bias], out)
