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
A Reshape or Flatten is read by onnx_reshape_rows.py: one that moves values between rows mixes,
one that folds the batch into an axis makes that axis the batch's for the ops after it. The batch's
size read as a value and met with the data mixes (onnx_batch_size_value.py); a Gather or GatherND
whose indices are each row's own position does not (onnx_row_positions.py).
Not covered: a reshape whose dims onnx cannot infer, Einsum, custom-domain ops, values computed
from the data. A graph the reading cannot read (onnx refuses it, or an axis is stored as external
data) is not flagged: no proof.
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
from server.backends.onnx_batch_names import BatchNames
from server.backends.onnx_batch_size_value import BatchSizeValues
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
from server.backends.onnx_output_shapes import inference_probe, input_first_dims
from server.backends.onnx_reshape_rows import Dim, Folded, Moved, reshaped_rows

logger = logging.getLogger(__name__)

Dims = list[int | str | None]
Value = onnx.TensorProto | np.ndarray  # a constant, made into an array only when read
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
        inferred = inferred_probe(
            _unnamed_expressions(as_initialized(inference_probe(model, set()), model, fed))
        )
    except Exception:  # onnx refuses some graphs onnxruntime runs: no proof, nothing flagged
        return {}
    walk = _Walk(BatchNames(input_first_dims(inferred)), _opset(model), fed=frozenset(fed))
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
    found = {out.name: walk.mixed[out.name] for out in model.graph.output if out.name in walk.mixed}
    for out in model.graph.output:
        folded = walk.folded_rows(out.name)
        if out.name not in found and folded is not None:
            found[out.name] = folded
    return found


def _unnamed_expressions(probe: onnx.ModelProto) -> onnx.ModelProto:
    """`probe` with the dims its exporter named by an expression ('4*batch') left unnamed, but for
    the inputs': torch's dynamo gives a fold of (batch, heads) and one of (steps, batch) the same
    name, and a name is taken for one size (a tester, session 51: nn.MultiheadAttention with as many
    steps as heads was read as moving rows). onnx's inference names each anew."""
    for value in (*probe.graph.value_info, *probe.graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and not dim.dim_param.isidentifier():
                dim.Clear()
    return probe


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
        self, names: BatchNames, opset: int, shapes: _Shapes | None = None, fed: frozenset[str] = frozenset()
    ) -> None:
        self.names = names  # the batch's symbols (onnx_batch_names.py)
        self.batch = names.batch
        self.opset = opset
        self.fed = fed  # initializers clients may send: never constants
        self.mixed: dict[str, str] = {}
        self.shapes = shapes if shapes is not None else _Shapes()
        self.constants: dict[str, Value] = {}  # values an axis may be read from
        self.values = BatchSizeValues(names)  # onnx_batch_size_value.py

    def graph(self, graph: onnx.GraphProto, outer: Mapping[str, Value]) -> None:
        self.constants.update(outer)
        for init in graph.initializer:
            if init.name not in self.fed:  # a client's value, not the initializer's (a tester, s51)
                self.constants[init.name] = init
        self.shapes.add(graph)
        for node in graph.node:
            self.values.see(node, self.shapes.get, partial(self._constant, node))
            why = self._mixes(node) or self._inherited(node)
            value = _constant(node) if node.op_type == "Constant" else self._folded(node)
            if value is not None and node.output:
                self.constants[node.output[0]] = value
            if why is None:
                self.names.carry(node, self.shapes.get)
            for name in node.output:
                if name and why is not None:
                    self.mixed[name] = why

    def folded_rows(self, name: str) -> str | None:
        """Why a graph output's rows are not the requests' rows: its first axis is the batch folded
        with other values ([N*T, C]), so no request's share of it is its row count."""
        dims = self.shapes.get(name)
        if not dims or not isinstance(dims[0], str) or dims[0] not in self.names.folds:
            return None
        if self.names.row_size(dims[0]) == 1:
            return None  # the batch itself under another name
        return (
            f"its first axis {self.names.shown(dims[:1])} is the batch's axis folded with other values"
            f"{self.names.note(dims[0])}: a request's share of it is not its rows"
        )

    def _inherited(self, node: onnx.NodeProto) -> str | None:
        """Why a node's outputs are made from mixed rows: an input whose values it reads, or a
        mixing op inside its subgraphs (If, Loop, Scan) or an outer tensor they read."""
        read = VALUE_INPUTS.get(node.op_type, range(len(node.input)))
        for i in read:
            if i < len(node.input) and node.input[i] in self.mixed:
                return self.mixed[node.input[i]]
        for sub in subgraphs(node):
            inner = _Walk(self.names.within(), self.opset, _Shapes(self.shapes), self.fed)
            inner.mixed = dict(self.mixed)
            inner.values = self.values.within(inner.names)
            inner.graph(sub, self.constants)
            for out in sub.output:
                if out.name in inner.mixed:
                    return f"{inner.mixed[out.name]}, inside {described(node)}"
            for body, made in _returned(node, sub):
                self.names.adopt(inner.names, inner.shapes.get(body), self.shapes.get(made))
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
        positions = self.values.positions
        if node.op_type in ("Gather", "GatherND") and positions.own_rows(node, self._row_size):
            return None
        sized = self.values.reads_size(node, self.shapes.get)
        if sized is not None:
            return sized
        if node.op_type in BROADCAST_OPS:
            return self._broadcast_pair(node)
        if node.op_type in RESHAPE_OPS:
            return self._reshape(node)
        if node.op_type not in MIXING_OPS:
            return None
        if node.op_type == "Scan":
            return self._scan(node)
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
        found = reshaped_rows(before, after, self.names.roots, self.names.folds)
        if isinstance(found, Folded):
            self.names.fold(found, node)
        if not isinstance(found, Moved):
            return None
        source, target = self.names.shown(self.names.spelled(before)), self.names.shown(after)
        where = (
            f"the batch's rows spread over its output's axes {found.behind}"
            if found.target is None
            else f"the batch's axis {found.source} with {found.ahead} ahead of it becoming axis "
            f"{found.target} with {found.behind} ahead of it"
        )
        return (
            f"{described(node)} moves values between the batch's rows: it reshapes '{node.input[0]}' "
            f"{source} to {target}, {where}"
        )

    def _scan(self, node: onnx.NodeProto) -> str | None:
        """A Scan with state along the batch's axis of an input carries its state row to row."""
        states, axes = scan_inputs(node)
        for j, axis in enumerate(axes):
            if states > 0 and self._is_batch(node, states + j, axis):
                return f"{described(node)} carries its state along {self._axis(node, states + j, axis)}"
        return None

    def _row_size(self, name: str, axis: int) -> Dim:
        dims = self.shapes.get(name)
        if dims is None or not -len(dims) <= axis < len(dims):
            return None
        return self.names.row_size(dims[axis])

    def _is_batch(self, node: onnx.NodeProto, index: int, axis: int) -> bool:
        dims = self.shapes.get(node.input[index]) if index < len(node.input) else None
        return dims is not None and -len(dims) <= axis < len(dims) and dims[axis] in self.batch

    def _axis(self, node: onnx.NodeProto, index: int, axis: int) -> str:
        dims = self.shapes.get(node.input[index]) or []
        dim = dims[axis] if -len(dims) <= axis < len(dims) else None
        return f"the batch's axis, {self._where(node, index, axis)}{self.names.note(dim)}"

    def _where(self, node: onnx.NodeProto, index: int, axis: int) -> str:
        dims = self.shapes.get(node.input[index]) or []
        return f"axis {axis % len(dims)} of '{node.input[index]}' {self.names.shown(dims)}"

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


def _returned(node: onnx.NodeProto, body: onnx.GraphProto) -> list[tuple[str, str]]:
    """Each value a subgraph returns and the node's output it becomes: an If's outputs, a Loop's
    carried values and scan outputs, a Scan's states."""
    if node.op_type == "If":
        return list(zip((out.name for out in body.output), node.output, strict=False))
    if node.op_type == "Loop":
        return list(zip((out.name for out in body.output[1:]), node.output, strict=False))
    if node.op_type == "Scan":
        states = len(node.input) - len(scan_inputs(node)[1])
        return list(zip((out.name for out in body.output[:states]), node.output[:states], strict=False))
    return []
