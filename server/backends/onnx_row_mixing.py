"""Graph outputs whose rows depend on other rows of the batch: an op upstream mixes along the
batch axis (a Softmax or CumSum over axis 0, a reduction over the batch broadcast back, ArgMax's
default axis 0, a MatMul contracting the batch, BatchNormalization in training mode).

Such an output keeps the batch's shape, so nothing in the shapes tells it. Coalesced with other
requests, a request's answer depends on its batch mates: over a Softmax on axis 0, a one-row
request [[1, 2, 3]] got 0.002 in each column beside three other rows, where alone it gets 1.0, OK
(Triton does the same). Read here, before any session is made, config completion leaves such a
model unbatched, and a config that batches requests together (dynamic or sequence batching) fails
its load naming the op (server/models/onnx_completion.py).

The batch axis is followed by its symbol: each input's first dim is named (onnx_output_shapes's
`inference_probe`) and onnx's shape inference carries the name through Transpose, Unsqueeze,
broadcasting, ... to every tensor; an op mixes rows when it works along an axis that carries it.
A time-major model (Transpose to [T, N, C], then an LSTM or a Softmax over axis 0) is not flagged:
axis 0 is T there. A value made from mixed rows mixes rows too (a reduction subtracted back).
Not covered: ops where the inference loses the symbol (a Reshape folding the batch into another
dim), a Scan along the batch, the batch size read as a value, Einsum, custom-domain ops.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from server.backends.graph_names import ONNX_DOMAIN
from server.backends.onnx_output_shapes import BATCH_SYMBOL, inference_probe, input_first_dims

Dims = list[int | str | None]
Axes = list[tuple[int, Sequence[int]]]  # (input index, the axes of that input the op mixes along)

BATCH_PREFIX = BATCH_SYMBOL.split("{")[0]
SHAPE_ONLY_OPS = frozenset({"Shape", "Size"})  # read their input's shape, never its values
_REDUCE_OPS = frozenset(
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
_AXIS_OPS = {  # op -> the default of its `axis` attribute (one axis mixed)
    "ArgMax": 0,
    "ArgMin": 0,
    "TopK": -1,
    "LpNormalization": -1,
    "Gather": 0,
    "GatherElements": 0,
}
MIXING_OPS = (
    _REDUCE_OPS
    | _SOFTMAX_OPS
    | frozenset(_AXIS_OPS)
    | {"CumSum", "LayerNormalization", "MeanVarianceNormalization", "BatchNormalization"}
    | {"GatherND", "MatMul", "Gemm", "RNN", "LSTM", "GRU"}
)


def row_mixing_outputs(model: onnx.ModelProto, fed: Collection[str] = ()) -> dict[str, str]:
    """Each graph output whose rows depend on other rows of the batch, and why (the op). `fed`:
    overridable initializers that clients may send; the others are their initializers' shape."""
    if not input_first_dims(model) and not _unnamed_first_dims(model):
        return {}  # no input with a variable first dim: nothing is batched
    if not any(node.op_type in MIXING_OPS for node in _nodes(model.graph)):
        return {}
    probe = _as_initialized(inference_probe(model, set()), model, fed)
    batch = input_first_dims(probe)
    try:
        inferred = onnx.shape_inference.infer_shapes(probe, data_prop=True)
    except Exception:  # onnx refuses some graphs onnxruntime runs: no proof, nothing flagged
        return {}
    walk = _Walk(batch, _opset(model))
    walk.graph(inferred.graph, {})
    return {out.name: walk.mixed[out.name] for out in model.graph.output if out.name in walk.mixed}


def _as_initialized(probe: onnx.ModelProto, model: onnx.ModelProto, fed: Collection[str]) -> onnx.ModelProto:
    """`probe` with each overridable initializer no client sends declared as its initializer is:
    declared [N, 1] beside x [N, 3], a constant [[2]] had read as one value a row."""
    shapes = {init.name: init.dims for init in model.graph.initializer if init.name not in fed}
    for value in probe.graph.input:
        if value.name in shapes and value.type.HasField("tensor_type"):
            value.type.tensor_type.shape.Clear()
            for size in shapes[value.name]:
                value.type.tensor_type.shape.dim.add().dim_value = size
    return probe


def _unnamed_first_dims(model: onnx.ModelProto) -> bool:
    initializers = {init.name for init in model.graph.initializer}
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name not in initializers and dims and not dims[0].HasField("dim_value"):
            return True
    return False


def _nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for sub in _subgraphs(node):
            yield from _nodes(sub)


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ONNX_DOMAIN), 1)


def _dims(value: onnx.ValueInfoProto) -> Dims | None:
    tensor = value.type.tensor_type
    if not value.type.HasField("tensor_type") or not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]


def _attr(node: onnx.NodeProto, name: str, default: object) -> object:
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


class _Walk:
    """One pass over a graph in its order: `mixed` maps each tensor whose rows depend on other rows
    of the batch to the op that mixes them."""

    def __init__(self, batch: set[str], opset: int) -> None:
        self.batch = batch
        self.opset = opset
        self.mixed: dict[str, str] = {}
        self.shapes: dict[str, Dims] = {}
        # Values an axis may be read from, made into arrays only when one is (weights stay as they are).
        self.constants: dict[str, onnx.TensorProto | np.ndarray] = {}

    def graph(self, graph: onnx.GraphProto, outer: Mapping[str, onnx.TensorProto | np.ndarray]) -> None:
        self.constants.update(outer)
        for init in graph.initializer:
            self.constants[init.name] = init
        for value in (*graph.input, *graph.value_info, *graph.output):
            if (dims := _dims(value)) is not None:
                self.shapes[value.name] = dims
        for node in graph.node:
            why = self._mixes(node) or self._inherited(node)
            if node.op_type == "Constant" and (value := _constant(node)) is not None:
                self.constants[node.output[0]] = value
            for name in node.output:
                if name and why is not None:
                    self.mixed[name] = why

    def _inherited(self, node: onnx.NodeProto) -> str | None:
        """Why a node's outputs are made from mixed rows: an input of it, or a mixing op inside
        its subgraphs (If, Loop, Scan) or an outer tensor they read."""
        if node.op_type in SHAPE_ONLY_OPS:
            return None
        for name in node.input:
            if name in self.mixed:
                return self.mixed[name]
        for sub in _subgraphs(node):
            inner = _Walk(self.batch, self.opset)
            inner.mixed = dict(self.mixed)
            inner.shapes = dict(self.shapes)
            inner.graph(sub, self.constants)
            for out in sub.output:
                if out.name in inner.mixed:
                    return (
                        f"{inner.mixed[out.name]} inside {node.op_type} node '{node.name or node.output[0]}'"
                    )
        return None

    def _mixes(self, node: onnx.NodeProto) -> str | None:
        """Why the node mixes rows of the batch (None: it does not, or it cannot be told)."""
        if node.domain not in ONNX_DOMAIN:
            return None
        for index, axes in self._axes(node):
            if index >= len(node.input) or (dims := self.shapes.get(node.input[index])) is None:
                continue
            for axis in axes:
                if -len(dims) <= axis < len(dims) and dims[axis] in self.batch:
                    where = axis % len(dims)
                    return (
                        f"{_describe(node)} works along axis {where} of '{node.input[index]}' "
                        f"{_shown(dims)}, the batch's"
                    )
        return None

    def _axes(self, node: onnx.NodeProto) -> Axes:
        """The axes of its inputs along which the node mixes values (none where unknown)."""
        op, rank = node.op_type, len(self.shapes.get(node.input[0], [])) if node.input else 0
        if op in _SOFTMAX_OPS:
            axis = int(_attr(node, "axis", -1 if self.opset >= 13 else 1))  # type: ignore[call-overload]
            # Before opset 13 the input is read as 2-D, [axis:] flattened into each row.
            return [(0, [axis] if self.opset >= 13 else range(axis % max(rank, 1), rank))]
        if op in _AXIS_OPS:
            return [(0, [int(_attr(node, "axis", _AXIS_OPS[op]))])]  # type: ignore[call-overload]
        if op == "CumSum":
            axis = self._constant(node, 1)
            return [] if axis is None or axis.size != 1 else [(0, [int(axis.reshape(-1)[0])])]
        if op in _REDUCE_OPS:
            return [(0, self._reduced(node, rank))]
        if op == "LayerNormalization":
            axis = int(_attr(node, "axis", -1))  # type: ignore[call-overload]
            return [(0, range(axis % max(rank, 1), rank))]
        if op == "MeanVarianceNormalization":
            return [(0, list(_attr(node, "axes", [0, 2, 3])))]  # type: ignore[call-overload]
        if op == "BatchNormalization" and _attr(node, "training_mode", 0):
            return [(0, [a for a in range(rank) if a != 1])]
        if op == "GatherND":
            return [(0, [int(_attr(node, "batch_dims", 0))])]  # type: ignore[call-overload]
        if op == "MatMul":
            return [(0, [-1]), (1, [-2, -1])]  # contracted, and the second's columns
        if op == "Gemm":
            return [(0, [0 if _attr(node, "transA", 0) else 1]), (1, [0, 1])]
        if op in {"RNN", "LSTM", "GRU"}:
            return [(0, [1 if _attr(node, "layout", 0) else 0])]  # the sequence axis
        return []

    def _reduced(self, node: onnx.NodeProto, rank: int) -> Sequence[int]:
        axes = _attr(node, "axes", None)
        if axes is None and len(node.input) > 1 and node.input[1]:
            found = self._constant(node, 1)
            if found is None:
                return []  # axes computed at run time: cannot be told
            axes = [int(a) for a in found.reshape(-1)]
        if not axes:  # every axis, unless told to do nothing
            return [] if _attr(node, "noop_with_empty_axes", 0) else range(rank)
        return list(axes)  # type: ignore[call-overload]

    def _constant(self, node: onnx.NodeProto, index: int) -> np.ndarray | None:
        found = self.constants.get(node.input[index]) if index < len(node.input) else None
        return numpy_helper.to_array(found) if isinstance(found, onnx.TensorProto) else found


def _constant(node: onnx.NodeProto) -> onnx.TensorProto | np.ndarray | None:
    for attr in node.attribute:
        if attr.name == "value":
            return attr.t
        if attr.name in ("value_int", "value_ints"):
            return np.asarray(onnx.helper.get_attribute_value(attr), dtype=np.int64)
    return None


def _shown(dims: Dims) -> list[int | str | None]:
    """`dims` as a config's reader knows them: the probe's own name of an unnamed dim is 'batch'."""
    return ["batch" if isinstance(d, str) and d.startswith(BATCH_PREFIX) else d for d in dims]


def _describe(node: onnx.NodeProto) -> str:
    return (
        f"{node.op_type} node '{node.name}'"
        if node.name
        else f"the {node.op_type} node making '{node.output[0]}'"
    )
