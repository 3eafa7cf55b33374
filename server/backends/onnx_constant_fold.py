"""Small constant values computed at load from the constants a graph holds, for the ops exporters
use to write an axis, a Slice's bounds or a Pad's pads. torch's legacy exporter writes `F.pad`'s
pads through ConstantOfShape -> Concat -> Reshape -> Slice -> Transpose -> Reshape -> Cast, and a
graph exported without constant folding writes a Slice's axes as an Unsqueeze of a Constant. Read
only as written, such a value was "computed at run time", and a pad along the batch loaded batched
and answered wrong, OK (a tester, session 50). Only values of at most MAX_ELEMENTS are made; any
other op, or a failure, is "not known" (None).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import onnx

from server.backends.graph_names import ONNX_DOMAIN, attribute, int_attribute, shape_read
from server.backends.onnx_reference_fold import reference_folded

MAX_ELEMENTS = 64


def _axes(node: onnx.NodeProto, values: Sequence[np.ndarray]) -> list[int] | None:
    if len(values) > 1:
        return [int(a) for a in values[1].reshape(-1)]
    found = attribute(node, "axes", None)
    return None if found is None else [int(a) for a in found]  # type: ignore[attr-defined]


def _unsqueeze(node: onnx.NodeProto, values: Sequence[np.ndarray]) -> np.ndarray | None:
    axes = _axes(node, values)
    if axes is None:
        return None
    rank = values[0].ndim + len(axes)
    return np.expand_dims(values[0], tuple(sorted(a % rank for a in axes)))


def _squeeze(node: onnx.NodeProto, values: Sequence[np.ndarray]) -> np.ndarray:
    axes = _axes(node, values)
    return np.squeeze(values[0], axis=None if not axes else tuple(axes))


def _cast(node: onnx.NodeProto, values: Sequence[np.ndarray]) -> np.ndarray | None:
    """To numpy's own number types only: a float8's saturation (448, not NaN) is onnxruntime's
    (a tester, session 66)."""
    to = onnx.helper.tensor_dtype_to_np_dtype(int(attribute(node, "to", 0)))  # type: ignore[call-overload]
    return values[0].astype(to) if np.dtype(to).isbuiltin == 1 and np.dtype(to).kind in "biuf" else None


def _gather(node: onnx.NodeProto, values: Sequence[np.ndarray]) -> np.ndarray:
    return np.take(values[0], values[1], axis=int(attribute(node, "axis", 0)))  # type: ignore[call-overload]


def _constant_of_shape(node: onnx.NodeProto, values: Sequence[np.ndarray]) -> np.ndarray:
    fill = attribute(node, "value", None)
    value = (
        onnx.numpy_helper.to_array(fill) if isinstance(fill, onnx.TensorProto) else np.zeros(1, np.float32)
    )
    return np.full(tuple(int(d) for d in values[0].reshape(-1)), value.reshape(-1)[0], value.dtype)


def _slice(node: onnx.NodeProto, values: Sequence[np.ndarray]) -> np.ndarray:
    data, starts, ends = values[0], values[1].reshape(-1), values[2].reshape(-1)
    axes = values[3].reshape(-1) if len(values) > 3 else np.arange(len(starts))
    steps = values[4].reshape(-1) if len(values) > 4 else np.ones(len(starts), np.int64)
    index = [slice(None)] * data.ndim
    for axis, start, end, step in zip(axes, starts, ends, steps, strict=True):
        index[int(axis)] = slice(int(start), int(end), int(step))
    return data[tuple(index)]


def _reshape(node: onnx.NodeProto, values: Sequence[np.ndarray]) -> np.ndarray:
    """A 0 copies the data's dim there unless `allowzero` (a small table viewed as [0, -1] had been
    "not known", and a view by it refused; a tester, session 66)."""
    shape = [int(d) for d in values[1].reshape(-1)]
    if not int_attribute(node, "allowzero", 0):
        shape = [values[0].shape[at] if d == 0 and at < values[0].ndim else d for at, d in enumerate(shape)]
    return values[0].reshape(shape)


def _transpose(node: onnx.NodeProto, values: Sequence[np.ndarray]) -> np.ndarray:
    perm = attribute(node, "perm", None)
    return np.transpose(values[0], None if perm is None else tuple(perm))  # type: ignore[arg-type]


_FOLDS: dict[str, Callable[[onnx.NodeProto, Sequence[np.ndarray]], np.ndarray | None]] = {
    "Identity": lambda node, v: v[0],
    "Cast": _cast,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Concat": lambda node, v: np.concatenate(v, axis=int(attribute(node, "axis", 0))),  # type: ignore[call-overload]
    "Reshape": _reshape,
    "Neg": lambda node, v: -v[0],
    "Add": lambda node, v: v[0] + v[1],
    "Sub": lambda node, v: v[0] - v[1],
    "Mul": lambda node, v: v[0] * v[1],
    # torch's legacy expand(1, -1, -1): Where(Equal(shape, -1), 1, shape), its shape written
    "Equal": lambda node, v: np.equal(v[0], v[1]),
    # torch's scripted `if not is_batched:` / `x.dim() != 3` (a rank test's If; a tester, s65)
    "Not": lambda node, v: np.logical_not(v[0]),
    "And": lambda node, v: np.logical_and(v[0], v[1]),
    "Or": lambda node, v: np.logical_or(v[0], v[1]),
    "Greater": lambda node, v: np.greater(v[0], v[1]),
    "Less": lambda node, v: np.less(v[0], v[1]),
    "GreaterOrEqual": lambda node, v: np.greater_equal(v[0], v[1]),
    "LessOrEqual": lambda node, v: np.less_equal(v[0], v[1]),
    "Where": lambda node, v: np.where(v[0].astype(bool), v[1], v[2]),
    "Gather": _gather,
    "Slice": _slice,
    "Transpose": _transpose,
    "ConstantOfShape": _constant_of_shape,
}


def folded(
    node: onnx.NodeProto,
    values: Sequence[np.ndarray | None],
    dims: Callable[[str], Sequence[int | str | None] | None] = lambda _: None,
    makers: Callable[[str], onnx.NodeProto | None] = lambda _: None,
    opset: int | None = None,
) -> np.ndarray | None:
    """The value of `node`'s first output from its inputs' `values` (None: not known), where it is
    an op of ONNX's own, one of those above, every input is known and small, and so is what it
    makes; or a Shape's or a Size's of a Shape's output (`makers`), whose `dims` are the rank: a
    LayerNorm's axes Size(Shape(x)) - 1, read as computed, had its ReduceMean taken as along the
    batch's axis and refused (a tester, session 61); or of a constant (a small weight's, torch's
    broadcast_tensors' Max(Shape(x), Shape(w))). Not of other tensors: their dims may be a stale
    stored shape's (a Loop's output stored [1, 1] from a batch-1 export; a tester, s62). Other ops
    of ONNX's own are run by onnx's reference implementation as `opset` defines them
    (onnx_reference_fold.py)."""
    if node.domain not in ONNX_DOMAIN or not node.input:
        return None
    if node.op_type in ("Shape", "Size"):
        maker = makers(node.input[0])
        if maker is not None and maker.op_type == "Shape":
            return _of_dims(node, dims(node.input[0]))
        return _of_dims(node, list(values[0].shape)) if values and values[0] is not None else None
    fold = _FOLDS.get(node.op_type)
    if fold is None:
        return reference_folded(node, values, opset, MAX_ELEMENTS)
    if not values or any(v is None or v.size > MAX_ELEMENTS for v in values):
        return None
    try:
        made = fold(node, [v for v in values if v is not None])
    except (ValueError, TypeError, IndexError):  # a graph onnxruntime would refuse: not known
        return None
    if made is None or made.size > MAX_ELEMENTS:
        return None
    return np.asarray(made)


def _of_dims(node: onnx.NodeProto, dims: Sequence[int | str | None] | None) -> np.ndarray | None:
    numbers = [d for d in dims or () if isinstance(d, int) and not isinstance(d, bool) and d >= 0]
    if dims is None or len(numbers) != len(dims):
        return None
    if node.op_type == "Size":
        return np.asarray(math.prod(numbers), np.int64)
    read = shape_read(node, numbers)
    return np.asarray(read, np.int64) if len(read) <= MAX_ELEMENTS else None


def small_constant(node: onnx.NodeProto) -> np.ndarray | None:
    """A Constant node's value where it is small (at most MAX_ELEMENTS values, none external):
    its `value` tensor, or its `value_int(s)`."""
    for found in node.attribute:
        if found.name == "value" and found.t.data_location != onnx.TensorProto.EXTERNAL:
            small = math.prod(found.t.dims) <= MAX_ELEMENTS
            return onnx.numpy_helper.to_array(found.t) if small else None
        if found.name in ("value_int", "value_ints"):
            return np.asarray(onnx.helper.get_attribute_value(found), dtype=np.int64)
    return None
