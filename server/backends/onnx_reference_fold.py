"""Small constants made at load by onnx's own reference implementation of an op, for the ops
onnx_constant_fold.py does not spell out itself. A view's shape written Concat([-1],
Cast(Abs([3.0]))) was "not known" to the load, read as no proof, and x [N, 4, 3] viewed as [4N, 3]
loaded batched, each request answered with the first request's values (a tester, session 65).

Only deterministic ops of ONNX's own domain whose output is bounded by their inputs (elementwise
ops, reductions, gathers), and Range, Tile and Expand after their output's size is worked out
first: a Range to 1e12 or a Tile by 1e9 is never made. The op is run as the graph's opset defines
it (a ReduceSum's axes are an attribute before 13, an input after). Any failure is "not known".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper

ELEMENTWISE = frozenset(
    {
        *("Abs", "Ceil", "Floor", "Round", "Sqrt", "Reciprocal", "Sign", "Relu", "Exp", "Log"),
        *("IsNaN", "IsInf", "BitwiseNot", "Div", "Pow", "Mod", "Max", "Min", "Sum", "Mean"),
        *("Xor", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "Clip"),
    }
)
BOUNDED = frozenset(
    {
        *("ReduceProd", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceMean", "ArgMax", "ArgMin"),
        *("CumSum", "Flatten", "Split", "GatherElements", "GatherND", "ScatterElements", "ScatterND"),
        *("NonZero", "Compress", "MatMul"),
    }
)
SIZED_FIRST = frozenset({"Range", "Tile", "Expand"})  # their output's size is read before running
REFERENCE_OPS = ELEMENTWISE | BOUNDED | SIZED_FIRST
# Ops whose float result onnxruntime may round otherwise: a transcendental, or sums in another order
# or by other steps (a float Range adds its step each turn, the reference multiplies: Range(0, 2.5,
# 0.1)'s last is 2.3999999 in onnxruntime, 2.4 here, and an axis floored from it was read as 1, not
# 0; a tester, session 66). Folded from integers only, and only where the same op on the integers
# as float64 gives the same numbers (a ReduceSum that wraps around int32 saturates in onnxruntime).
# The rest of the list is exact on floats too.
INEXACT_ON_FLOATS = frozenset(
    {
        *("Sqrt", "Reciprocal", "Exp", "Log", "Pow", "Mod", "Sum", "Mean", "ReduceProd", "ReduceSum"),
        *("ReduceMean", "CumSum", "MatMul", "Range"),
    }
)


def reference_folded(
    node: onnx.NodeProto, values: Sequence[np.ndarray | None], opset: int | None, limit: int
) -> np.ndarray | None:
    """`node`'s first output run by onnx's reference implementation on its inputs' `values` (an
    optional input left out is None, named ""), where the op is one above and what it makes has at
    most `limit` values; None otherwise."""
    if node.op_type not in REFERENCE_OPS or len(values) != len(node.input):
        return None
    if any(v is None and name for v, name in zip(values, node.input, strict=True)):
        return None
    given = {name: v for name, v in zip(node.input, values, strict=True) if name and v is not None}
    if not given or any(v.size > limit for v in given.values()):
        return None
    if not _plain(node, given):
        return None
    if node.op_type in SIZED_FIRST and not _small_enough(node.op_type, list(values), limit):
        return None
    try:
        made = _run(node, given, opset)
        if made is not None and node.op_type in INEXACT_ON_FLOATS:  # (of integers: no wrap-around)
            wide = _run(node, _widened(node, given), opset)
            made = made if wide is not None and np.array_equal(made, wide) else None
    except Exception:
        return None
    return made if made is not None and made.size <= limit else None


def _widened(node: onnx.NodeProto, given: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inputs as float64, a reduction's axes and a CumSum's axis as they are."""
    first = node.input[0]
    cut = node.op_type.startswith("Reduce") or node.op_type == "CumSum"
    return {name: v if cut and name != first else v.astype(np.float64) for name, v in given.items()}


def _plain(node: onnx.NodeProto, given: dict[str, np.ndarray]) -> bool:
    """Whether onnxruntime computes what the reference does from these inputs: numbers of
    numpy's own types, no float input a NaN or an infinity (a NaN's ArgMax, ReduceMax, Clip bound
    or float16 Sign is another value there; a tester, session 66), nor a float attribute, and
    integers only for the ops whose float results may be rounded otherwise."""
    floats = [v for v in given.values() if v.dtype.kind == "f"]
    if any(v.dtype.isbuiltin != 1 or v.dtype.kind not in "biuf" for v in given.values()):
        return False
    if floats and (node.op_type in INEXACT_ON_FLOATS or not all(np.all(np.isfinite(v)) for v in floats)):
        return False
    return all(math.isfinite(a.f) for a in node.attribute if a.type == onnx.AttributeProto.FLOAT)


def _small_enough(op: str, values: Sequence[np.ndarray | None], limit: int) -> bool:
    """Whether a Range, Tile or Expand makes at most `limit` values, told from its inputs alone."""
    try:
        if op == "Range":
            start, end, step = (float(np.asarray(v).reshape(-1)[0]) for v in values[:3])
            return step != 0 and max(math.ceil((end - start) / step), 0) <= limit
        data, count = values[0], values[1]
        if data is None or count is None:
            return False
        counts = [int(c) for c in count.reshape(-1)]
        if op == "Tile":
            return (
                len(counts) == data.ndim
                and min(counts, default=0) >= 0
                and data.size * math.prod(counts) <= limit
            )
        return math.prod(np.broadcast_shapes(data.shape, tuple(counts))) <= limit
    except (ValueError, TypeError, OverflowError, IndexError):
        return False


def _run(node: onnx.NodeProto, given: dict[str, np.ndarray], opset: int | None) -> np.ndarray | None:
    from onnx.reference import ReferenceEvaluator  # imported only where a fold needs it (~0.2 s)

    inputs = [
        helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)
        for name, value in given.items()
    ]
    outputs = [helper.make_empty_tensor_value_info(name) for name in node.output if name]
    graph = helper.make_graph([node], "fold", inputs, outputs)
    imports = [helper.make_opsetid("", opset)] if opset else []
    model = helper.make_model(graph, opset_imports=imports or None)
    with np.errstate(all="ignore"):  # overflow, a division by 0: the value is read as is (a thread's own)
        found = ReferenceEvaluator(model).run([node.output[0]], given)
    made = found[0] if isinstance(found, list | tuple) and found else None
    return np.asarray(made) if made is not None else None
