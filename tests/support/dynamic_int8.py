"""Small dynamically quantized models (onnxruntime's quantize_dynamic, as `sluiceway optimize --int8
dynamic` makes them) for the per-row quantization tests (server/backends/row_quantization.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WIDTH = 16


def float_mlp(path: Path, opset: int = 17, rank: int = 2) -> Path:
    """y = MatMul(Relu(MatMul(x, w0) + b0), w1): x [N, 16] (rank 3: [N, S, 16]) -> y [N, 4]."""
    rng = np.random.default_rng(11)
    weights = [
        numpy_helper.from_array(rng.standard_normal((WIDTH, 32)).astype(np.float32), "w0"),
        numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b0"),
        numpy_helper.from_array(rng.standard_normal((32, 4)).astype(np.float32), "w1"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["h0"]),
        helper.make_node("Add", ["h0", "b0"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w1"], ["y"]),
    ]
    lead: list[int | str] = ["N"] if rank == 2 else ["N", "S"]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [*lead, WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [*lead, 4])],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def float_two_heads(path: Path) -> Path:
    """y = MatMul(x, w0) + MatMul(x, w1) + b: one quantized x read by two MatMuls (fused by
    onnxruntime into MatMulIntegerToFloat nodes that share one DynamicQuantizeLinear)."""
    rng = np.random.default_rng(12)
    weights = [
        numpy_helper.from_array(rng.standard_normal((WIDTH, 8)).astype(np.float32), name)
        for name in ("w0", "w1")
    ]
    weights.append(numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b"))
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["h0"]),
        helper.make_node("MatMul", ["x", "w1"], ["h1"]),
        helper.make_node("Add", ["h0", "h1"], ["h"]),
        helper.make_node("Add", ["h", "b"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "two_heads",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def dynamic_int8(source: Path, path: Path, weights: str = "int8") -> Path:
    """`source` quantized by onnxruntime's quantize_dynamic (weights int8, or uint8 with a zero point)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    weight_type = QuantType.QInt8 if weights == "int8" else QuantType.QUInt8
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to pre-process first, on every call; put back below
    try:
        quantize_dynamic(source, path, weight_type=weight_type)
    finally:
        root.setLevel(level)
    return path


def rows_with_an_outlier(rows: int, seed: int = 3, lead: tuple[int, ...] = ()) -> np.ndarray:
    """Rows of ordinary values, the first 40x larger, the last all zeros (DynamicQuantizeLinear's
    scale 1)."""
    x = np.random.default_rng(seed).standard_normal((rows, *lead, WIDTH)).astype(np.float32)
    x[0] *= 40
    x[-1] = 0
    return x
