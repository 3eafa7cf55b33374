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
The ops and their axes are in onnx_mixing_ops.py. A MatMul or Gemm mixes where it contracts the
batch, or pairs the batch's rows with the batch's columns (x @ x^T); W @ x^T is per row. Bodies
of If, Loop and Scan are read, a Loop's or Scan's body inputs given the shapes of the values the
node feeds them where the body does not declare them, and so are model-local functions (inlined
first). A Scan along the batch with state carries the state from row to row.
Not covered: ops where the inference loses the symbol (a Reshape folding the batch into another
dim), the batch size read as a value, Einsum, custom-domain ops. A graph the reading cannot read
(onnx refuses it, or an axis is stored as external data) is not flagged: no proof.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Iterator, Mapping
from functools import partial

import numpy as np
import onnx
from onnx import numpy_helper

from server.backends.graph_names import ONNX_DOMAIN, described, graphs, subgraphs
from server.backends.onnx_batch_size_value import BatchSizeValues, floating
from server.backends.onnx_constant_fold import MAX_ELEMENTS, folded
from server.backends.onnx_mixing_ops import (
    BROADCAST_OPS,
    MIXING_OPS,
    VALUE_INPUTS,
    mixed_axes,
    paired_axes,
    scan_inputs,
)
from server.backends.onnx_mixing_probe import as_initialized, inferred_probe
from server.backends.onnx_output_shapes import BATCH_SYMBOL, inference_probe, input_first_dims
from server.backends.onnx_reshape_rows import Folded, Moved, reshaped_rows, spelled_out, values_per_row

logger = logging.getLogger(__name__)

Dims = list[int | str | None]
Value = onnx.TensorProto | np.ndarray  # a constant, made into an array only when read
BATCH_PREFIX = BATCH_SYMBOL.split("{")[0]
COMPUTED_SLICE = " (its bounds are computed at run time: the load cannot tell it keeps every row)"
MAX_READ = 1 << 16  # values of a constant read at most (a weight is not made an array here)
RESHAPE_OPS = frozenset({"Reshape", "Flatten"})  # onnx_reshape_rows.py reads them


def row_mixing_outputs(model: onnx.ModelProto, fed: Collection[str] = ()) -> dict[str, str]:
    """Each graph output whose rows depend on other rows of the batch, and why (the op). `fed`:
    overridable initializers that clients may send; the others are their initializers' shape."""
    if not input_first_dims(model) and not _unnamed_first_dims(model):
        return {}  # no input with a variable first dim: nothing is batched
    read = MIXING_OPS | BROADCAST_OPS | RESHAPE_OPS
    if not any(node.op_type in read for node in _nodes(model)):
        return {}
    try:
        inferred = inferred_probe(as_initialized(inference_probe(model, set()), model, fed))
    except Exception:  # onnx refuses some graphs onnxruntime runs: no proof, nothing flagged
        return {}
    walk = _Walk(input_first_dims(inferred), _opset(model))
    # The model's own initializers: the probe holds only small ones, and an index's offsets (a
    # view's, onnx_row_positions.py) can be longer. Read only where asked, up to MAX_READ values.
    weights: dict[str, Value] = {init.name: init for init in model.graph.initializer if init.name not in fed}
    try:
        walk.graph(inferred.graph, weights)
    except Exception as exc:  # a graph onnx took but this reading cannot: no proof either
        logger.warning(
            "could not read graph %r for ops that mix rows (%s): none assumed", model.graph.name, exc
        )
        return {}
    return {out.name: walk.mixed[out.name] for out in model.graph.output if out.name in walk.mixed}


def _unnamed_first_dims(model: onnx.ModelProto) -> bool:
    initializers = {init.name for init in model.graph.initializer}
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name not in initializers and dims and not dims[0].HasField("dim_value"):
            return True
    return False


def _nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    """Every node of the graph and of its model-local functions, at any depth."""
    tops = [
        model.graph,
        *(sub for function in model.functions for n in function.node for sub in subgraphs(n)),
    ]
    for function in model.functions:
        yield from function.node
    for top in tops:
        for graph in graphs(top):
            yield from graph.node


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ONNX_DOMAIN), 1)


def _dims(value: onnx.ValueInfoProto) -> Dims | None:
    tensor = value.type.tensor_type
    if not value.type.HasField("tensor_type") or not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]


class _Shapes:
    """Tensor name -> dims, read from a graph's value infos when first asked (a graph of 24,000
    nodes had spent 0.1 s making every one), else from the enclosing graph's."""

    def __init__(self, outer: _Shapes | None = None) -> None:
        self._outer = outer
        self._infos: dict[str, onnx.ValueInfoProto] = {}
        self._dims: dict[str, Dims | None] = {}

    def add(self, graph: onnx.GraphProto) -> None:
        for value in (*graph.input, *graph.value_info, *graph.output):
            self._infos[value.name] = value

    def floating(self, name: str) -> bool:
        info = self._infos.get(name)
        if info is None:
            return self._outer is not None and self._outer.floating(name)
        return floating(info.type.tensor_type.elem_type)

    def get(self, name: str) -> Dims | None:
        if name not in self._dims:
            info = self._infos.get(name)
            dims = _dims(info) if info is not None else None
            if dims is None and self._outer is not None:
                dims = self._outer.get(name)
            self._dims[name] = dims
        return self._dims[name]


class _Walk:
    """One pass over a graph in its order: `mixed` maps each tensor whose rows depend on other rows
    of the batch to the op that mixes them."""

    def __init__(
        self, batch: set[str], opset: int, shapes: _Shapes | None = None, folds: dict[str, Dims] | None = None
    ) -> None:
        self.batch = batch  # the batch's symbols, and those of axes the batch was folded into
        self.opset = opset
        self.mixed: dict[str, str] = {}
        self.shapes = shapes if shapes is not None else _Shapes()
        self.constants: dict[str, Value] = {}  # values an axis may be read from
        self.folds: dict[str, Dims] = folds if folds is not None else {}  # onnx_reshape_rows.py
        self.values = BatchSizeValues(self.batch)  # onnx_batch_size_value.py

    def graph(self, graph: onnx.GraphProto, outer: Mapping[str, Value]) -> None:
        self.constants.update(outer)
        for init in graph.initializer:
            self.constants[init.name] = init
        self.shapes.add(graph)
        for node in graph.node:
            why = self._mixes(node) or self._inherited(node)
            value = _constant(node) if node.op_type == "Constant" else self._folded(node)
            if value is not None and node.output:
                self.constants[node.output[0]] = value
            self.values.see(node, self.shapes.get, partial(self._constant, node))
            for name in node.output:
                if name and why is not None:
                    self.mixed[name] = why

    def _inherited(self, node: onnx.NodeProto) -> str | None:
        """Why a node's outputs are made from mixed rows: an input whose values it reads, or a
        mixing op inside its subgraphs (If, Loop, Scan) or an outer tensor they read."""
        read = VALUE_INPUTS.get(node.op_type, range(len(node.input)))
        for i in read:
            if i < len(node.input) and node.input[i] in self.mixed:
                return self.mixed[node.input[i]]
        for sub in subgraphs(node):
            inner = _Walk(set(self.batch), self.opset, _Shapes(self.shapes), dict(self.folds))
            inner.mixed = dict(self.mixed)
            inner.values = self.values.within(inner.batch)
            inner.graph(sub, self.constants)
            for out in sub.output:
                if out.name in inner.mixed:
                    return f"{inner.mixed[out.name]}, inside {described(node)}"
        return None

    def _folded(self, node: onnx.NodeProto) -> np.ndarray | None:
        """The node's value where its inputs are small constants (onnx_constant_fold.py)."""
        if node.domain not in ONNX_DOMAIN or not node.input:
            return None
        return folded(node, [self._constant(node, i, MAX_ELEMENTS) for i in range(len(node.input))])

    def _mixes(self, node: onnx.NodeProto) -> str | None:
        """Why the node mixes rows of the batch (None: it does not, or it cannot be told)."""
        if node.domain not in ONNX_DOMAIN:
            return None
        if node.op_type in BROADCAST_OPS:
            return self._broadcast_pair(node) or self.values.met_with_data(
                node, self.shapes.get, self.shapes.floating
            )
        if node.op_type in RESHAPE_OPS:
            return self._reshape(node)
        if node.op_type not in MIXING_OPS:
            return None
        if node.op_type == "Scan":
            return self._scan(node)
        if node.op_type in ("Gather", "GatherND") and self.values.positions.own_rows(node, self._row_size):
            return None
        dims = [self.shapes.get(name) or [] for name in node.input]
        lengths = [d[0] if len(d) == 1 and isinstance(d[0], int) else None for d in dims]

        def constant(index: int) -> np.ndarray | None:
            return self._constant(node, index)

        for index, axes in mixed_axes(node, [len(d) for d in dims], self.opset, constant, lengths):
            for axis in axes:
                if self._is_batch(node, index, axis):
                    computed = node.op_type == "Slice" and (constant(1) is None or constant(2) is None)
                    note = COMPUTED_SLICE if computed else ""
                    return f"{described(node)} works along {self._axis(node, index, axis)}{note}"
        pair = paired_axes(node)
        if pair is not None and self._is_batch(node, 0, pair[0]) and self._is_batch(node, 1, pair[1]):
            rows, columns = (self._where(node, i, axis) for i, axis in enumerate(pair))
            return (
                f"{described(node)} pairs each row of the batch with every other: its rows come "
                f"from {rows} and its columns from {columns}, both the batch's axis"
            )
        return None

    def _broadcast_pair(self, node: onnx.NodeProto) -> str | None:
        """An elementwise op whose inputs carry the batch on different axes once broadcast
        (x[:, None] - x[None]): each row is paired with every other."""
        dims = [self.shapes.get(name) or [] for name in node.input]
        rank = max((len(d) for d in dims), default=0)
        seen: dict[int, int] = {}  # the broadcast axis of the batch -> the input carrying it there
        for index, shape in enumerate(dims):
            for axis, dim in enumerate(shape):
                if dim in self.batch:
                    seen.setdefault(rank - len(shape) + axis, index)
        if len(set(seen.values())) < 2 or len(seen) < 2:
            return None
        (a, i), (b, j) = sorted(seen.items())[:2]
        return (
            f"{described(node)} pairs each row of the batch with every other: it broadcasts "
            f"{self._where(node, i, a - rank + len(dims[i]))} against "
            f"{self._where(node, j, b - rank + len(dims[j]))}, both the batch's axis"
        )

    def _reshape(self, node: onnx.NodeProto) -> str | None:
        """A reshape that moves values between the batch's rows; one that folds the batch into an
        axis makes that axis the batch's for the ops after it."""
        before, after = self.shapes.get(node.input[0]), self.shapes.get(node.output[0])
        if before is None or after is None:
            return None
        found = reshaped_rows(before, after, self.batch, self.folds)
        if isinstance(found, Folded):
            self.batch.add(found.symbol)
            self.folds[found.symbol] = list(found.dims)
        if not isinstance(found, Moved):
            return None
        source, target = spelled_out(before, self.folds), spelled_out(after, self.folds)
        return (
            f"{described(node)} moves values between the batch's rows: it reshapes '{node.input[0]}' "
            f"{_shown(source)} to {_shown(target)}, the batch's axis {found.source} becoming axis "
            f"{found.target} with other dims ahead of it"
        )

    def _scan(self, node: onnx.NodeProto) -> str | None:
        """A Scan with state along the batch's axis of an input carries its state row to row."""
        states, axes = scan_inputs(node)
        for j, axis in enumerate(axes):
            if states > 0 and self._is_batch(node, states + j, axis):
                return f"{described(node)} carries its state along {self._axis(node, states + j, axis)}"
        return None

    def _row_size(self, name: str, axis: int) -> int | None:
        dims = self.shapes.get(name)
        if dims is None or not -len(dims) <= axis < len(dims):
            return None
        return values_per_row(dims[axis], self.batch, self.folds)

    def _is_batch(self, node: onnx.NodeProto, index: int, axis: int) -> bool:
        dims = self.shapes.get(node.input[index]) if index < len(node.input) else None
        return dims is not None and -len(dims) <= axis < len(dims) and dims[axis] in self.batch

    def _axis(self, node: onnx.NodeProto, index: int, axis: int) -> str:
        dims = self.shapes.get(node.input[index]) or []
        dim = dims[axis] if -len(dims) <= axis < len(dims) else None
        folded = (
            f" (a reshape folded the batch's axis into it: {_shown(spelled_out([dim], self.folds))})"
            if isinstance(dim, str) and dim in self.folds
            else ""
        )
        return f"the batch's axis, {self._where(node, index, axis)}{folded}"

    def _where(self, node: onnx.NodeProto, index: int, axis: int) -> str:
        dims = self.shapes.get(node.input[index]) or []
        return f"axis {axis % len(dims)} of '{node.input[index]}' {_shown(dims)}"

    def _constant(self, node: onnx.NodeProto, index: int, limit: int = MAX_READ) -> np.ndarray | None:
        """The value of the node's input `index` where the graph holds it; None where it is
        computed, has more than `limit` values, or is stored as external data (read relative to
        no folder here)."""
        found = self.constants.get(node.input[index]) if index < len(node.input) else None
        if not isinstance(found, onnx.TensorProto):
            return found if found is None or found.size <= limit else None
        if found.data_location == onnx.TensorProto.EXTERNAL or math.prod(found.dims) > limit:
            return None
        value: np.ndarray = numpy_helper.to_array(found)
        return value


def _constant(node: onnx.NodeProto) -> Value | None:
    for found in node.attribute:
        if found.name == "value":
            tensor: onnx.TensorProto = found.t
            return tensor
        if found.name in ("value_int", "value_ints"):
            return np.asarray(onnx.helper.get_attribute_value(found), dtype=np.int64)
    return None


def _shown(dims: Dims) -> list[int | str | None]:
    """`dims` as a config's reader knows them: the probe's own name of an unnamed dim is 'batch'."""
    return ["batch" if isinstance(d, str) and d.startswith(BATCH_PREFIX) else d for d in dims]
