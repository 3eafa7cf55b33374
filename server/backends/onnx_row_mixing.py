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
one that folds the batch into an axis makes that axis the batch's for the ops after it (also a
shape led by N * K, onnx_batch_multiples.py); the names the batch goes by are kept in
onnx_batch_names.py. The batch's size taken as a value mixes
(onnx_batch_size_value.py); a Gather or GatherND whose indices are each row's own place does not
(onnx_row_positions.py). A computed Pad or Tile, or an Expand copying the batch, may add rows
(onnx_grown_rows.py, onnx_partial_ints.py). Initializers clients may send are never constants.
A standard op of none of onnx_mixing_ops.py's sets is taken as mixing (no proof of rows). MaxPool's
indices are positions over the whole batch (onnx_pool_indices.py). Not covered: values computed
from the data. A graph the reading cannot read (onnx refuses it) is refused: no proof of rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from functools import partial

import numpy as np
import onnx

from server.backends.graph_names import ONNX_DOMAIN, described, int_attribute, subgraphs
from server.backends.onnx_batch_multiples import multiple_fold
from server.backends.onnx_batch_names import BatchNames
from server.backends.onnx_batch_size_value import BatchSizeValues
from server.backends.onnx_broadcast_pairs import broadcast_pair, concat_pinned, matmul_pair, scale_pair
from server.backends.onnx_constant_fold import MAX_ELEMENTS, folded
from server.backends.onnx_dim_terms import checked_reshapes
from server.backends.onnx_einsum import einsum_mixing
from server.backends.onnx_filled_shapes import filled_where_unsure, moved_unseen
from server.backends.onnx_foreign_ops import ForeignOps, foreign
from server.backends.onnx_grown_rows import grown_rows
from server.backends.onnx_mixing_graph import (
    DataSizedLengths,
    Dims,
    Shapes,
    Value,
    all_nodes,
    constant_value,
    made_from,
    returned_values,
    standard_opset,
    unnamed_first_dims,
    value_array,
    value_shape,
)
from server.backends.onnx_mixing_ops import (
    BROADCAST_OPS,
    MIXING_OPS,
    ROW_WISE_OPS,
    SCALED_OPS,
    VALUE_INPUTS,
    computed_bounds,
    mixed_axes,
    paired_axes,
    scan_inputs,
)
from server.backends.onnx_mixing_probe import declared_batch_unmade, reading_probe
from server.backends.onnx_output_shapes import input_first_dims
from server.backends.onnx_partial_dims import partial_dims
from server.backends.onnx_partial_ints import PartialInts
from server.backends.onnx_pool_indices import WATCHED as POOLS_WATCHED
from server.backends.onnx_pool_indices import PoolIndices
from server.backends.onnx_reshape_rows import Dim
from server.backends.onnx_sequence_reads import sequence_concat
from server.backends.onnx_table_reads import table_mixing
from server.backends.onnx_unplaced_reshapes import unplaced_reshape
from server.backends.onnx_value_lineage import ValueLineage

logger = logging.getLogger(__name__)

COMPUTED_SLICE = " (its bounds are computed at run time: the load cannot tell it keeps every row)"
MAX_READ = 1 << 16  # values of a constant read at most (a weight is not made an array here)
RESHAPE_OPS = frozenset({"Reshape", "Flatten"})  # onnx_reshape_rows.py reads them
AXIS_MOVES = frozenset({"Transpose", "Squeeze", "Unsqueeze", "Loop", "SequenceMap"})  # (If: its bodies')


def row_mixing_outputs(
    model: onnx.ModelProto, fed: Collection[str] = (), server_fed: Collection[str] = ()
) -> dict[str, str]:
    """Each graph output whose rows depend on other rows of the batch, and why; args as reading_probe's."""
    if not input_first_dims(model) and not unnamed_first_dims(model):
        return {}  # no input with a variable first dim: nothing is batched
    if all(
        node.domain in ONNX_DOMAIN and node.op_type in ROW_WISE_OPS - AXIS_MOVES for node in all_nodes(model)
    ):
        return {}  # (an axis moved may leave an output declared the batch's another axis: read)
    try:
        inferred, stand_ins = reading_probe(model, fed, server_fed)
        walk = _Walk(BatchNames(input_first_dims(inferred)), standard_opset(model), fed=frozenset(fed))
        walk.foreign.stand_ins = stand_ins
        # The model's own initializers: the probe holds only small ones, and an index's offsets (a
        # view's, onnx_row_positions.py) can be longer. Read only where asked, up to MAX_READ values.
        weights: dict[str, Value] = {i.name: i for i in model.graph.initializer if i.name not in fed}
        walk.graph(inferred.graph, weights)
    except Exception as exc:  # no proof of rows: refused (assumed per row, it had mixed clients' rows; s52)
        logger.warning("could not read graph %r for ops that mix rows (%s)", model.graph.name, exc)
        unread = f"the load could not read the graph for ops that mix rows ({type(exc).__name__}: {exc})"
        return {out.name: unread[:400] for out in model.graph.output}
    found = {out.name: walk.mixed[out.name] for out in model.graph.output if out.name in walk.mixed}
    declared = any(walk.names.twice(walk.shapes.get(value.name)) for value in inferred.graph.input)
    for out in model.graph.output:
        why = None if declared else walk.names.twice(walk.shapes.get(out.name))  # (inputs so: outputs too)
        why = why or walk.names.folded_rows(walk.shapes.get(out.name))
        why = why or walk.values.made_from_size(out.name)
        why = why or declared_batch_unmade(out, walk.shapes.get(out.name), walk.batch)
        if out.name not in found and why is not None:
            found[out.name] = why
    return found


class _Walk:
    """One pass over a graph in its order: `mixed` maps each tensor whose rows depend on other rows
    of the batch to the op that mixes them."""

    def __init__(
        self, names: BatchNames, opset: int, shapes: Shapes | None = None, fed: frozenset[str] = frozenset()
    ) -> None:
        self.names = names  # the batch's symbols (onnx_batch_names.py)
        self.batch = names.batch
        self.opset = opset
        self.fed = fed  # initializers clients may send: never constants
        self.mixed: dict[str, str] = {}
        self.shapes = shapes if shapes is not None else Shapes()
        self.constants: dict[str, Value] = {}  # values an axis may be read from
        self.partial = PartialInts()  # onnx_partial_ints.py: pads, repeats and sizes known in part
        self.lineage: dict[str, frozenset[str]] = {}  # a tensor -> the graph inputs it is made from
        self.makers: dict[str, onnx.NodeProto] = {}  # a tensor -> the node making it
        self.values = BatchSizeValues(names, self.partial, self.makers)  # onnx_batch_size_value.py
        self.pools = PoolIndices()  # onnx_pool_indices.py: a MaxPool's flat positions
        self.batched: frozenset[str] = frozenset()  # the top graph's inputs that carry the batch
        self.lengths, self.top, self.ranks = DataSizedLengths(), True, True  # not a body; ranks folded
        lineage = partial(made_from, lineage=self.lineage, makers=self.makers)  # no bound method: no cycle
        self.foreign = ForeignOps(opset, self.names, self.shapes.get, self.constants, lineage)
        self.value_lineage = ValueLineage(lineage, self.makers)  # lengths of other axes: no input's

    def graph(self, graph: onnx.GraphProto, outer: Mapping[str, Value]) -> None:
        self.constants.update(outer)
        for init in graph.initializer:
            if init.name not in self.fed:  # a client's value, not the initializer's (a tester, s51)
                self.constants[init.name] = init
        self.shapes.add(graph)
        self.names.checked |= checked_reshapes(graph)  # the Reshapes onnxruntime runs and checks
        self.foreign.enter(graph)
        for value in graph.input:  # a body's inputs are its node's: made from what feeds them
            self.lineage.setdefault(
                value.name, frozenset({value.name}) if value.name not in self.constants else frozenset()
            )
        if not self.batched:  # the main graph's batched inputs (a body's walk holds its node's)
            self.batched = frozenset(
                v.name for v in graph.input if (self.shapes.get(v.name) or [None])[0] in self.batch
            )
        if self.top:  # the lengths the main graph's inputs name
            self.value_lineage.declare(graph, self.batch)
        lineage = partial(made_from, lineage=self.lineage, makers=self.makers)  # held: no bound method
        for node in graph.node:
            self.makers.update((out, node) for out in node.output if out)
            constant = partial(self._constant, node)
            named = self.partial.reshaped(node, self.shapes.get, constant, self.names.factored)
            named = named or partial_dims(
                node, self.partial, self.shapes.get, constant, self.constants.get, self.makers.get
            )
            if named is not None:
                self.shapes.refine(node.output[0], named, self.names.renamed)  # its amounts' entries
            filled = filled_where_unsure(node, self.shapes.get, constant)
            for out, dims in zip(node.output, filled, strict=True):
                if out and dims is not None:  # what onnx could not tell, as the op's form gives it
                    self.shapes.refine(out, dims, self.names.renamed)
            self.values.see(node, self.shapes.get, constant, lineage)
            self.partial.see(node, self.shapes.get, constant, self.names.factored)
            self.value_lineage.see(node, self.partial, self.batch, self.shapes.get, self.batched)
            why = self._mixes(node) or self._inherited(node)
            self.foreign.see(node, why)
            self.lengths.see(node, why is not None, self.shapes.get)
            value = constant_value(node) if node.op_type == "Constant" else self._folded(node)
            if value is not None and node.output:
                self.constants[node.output[0]] = value
            self.names.carry(node, self.shapes.get, why is not None, self.lengths.names)  # mixing's lengths
            for name in node.output:
                if name and why is not None:
                    self.mixed[name] = why
            if node.op_type in POOLS_WATCHED and node.input:
                batched = any(d in self.batch for d in self.shapes.get(node.input[0]) or [])
                others = any(name in self.mixed for name in node.input[1:])
                for name, flat in self.pools.see(node, batched, why, others).items():
                    self.mixed.setdefault(name, flat)

    def _lineage(self, name: str) -> frozenset[str]:
        return made_from(name, self.lineage, self.makers)

    def _inherited(self, node: onnx.NodeProto) -> str | None:
        """Why a node's outputs are made from mixed rows: an input whose values it reads, or a
        mixing op inside its subgraphs (If, Loop, Scan) or an outer tensor they read."""
        read = VALUE_INPUTS.get(node.op_type, range(len(node.input)))
        cleared = self.pools.cleared(node)  # a MaxPool's positions taken back to each row's own
        for i in (i for i in read if i not in cleared):
            if i < len(node.input) and node.input[i] in self.mixed:
                return self.mixed[node.input[i]]
        if (length := self.lengths.read(node, self.shapes.get)) is not None:
            return length
        unread = self.foreign.unread_mixing(node, self.mixed, self.values.made_from_size)
        if unread is not None:  # an input of the op a stand-in stands for, not read by it
            return unread
        returns: list[list[tuple[BatchNames, Dims | None]]] = []  # per output, each body's value
        for sub in subgraphs(node):
            if not self.values.rankless.runs(node, sub):
                continue  # an If's branch its constant condition never takes (s65)
            inner = _Walk(self.names.within(), self.opset, Shapes(self.shapes), self.fed)
            inner.mixed = dict(self.mixed)
            inner.partial, inner.pools = self.partial.within(), self.pools.within()
            inner.values = self.values.within(inner.names, inner.partial)
            inner.lineage, inner.makers = self.lineage, self.makers  # a graph's names are its own
            inner.batched, inner.lengths, inner.top = self.batched, self.lengths, False
            inner.value_lineage, inner.ranks = self.value_lineage, self.ranks and node.op_type == "If"
            inner.foreign = self.foreign.within(inner.names, inner.shapes.get, inner.constants)
            inner.graph(sub, self.constants)
            self.values.returned(node, sub, inner.values, inner.shapes.get)  # made from the batch's size
            for out in sub.output:
                if out.name in inner.mixed:
                    return f"{inner.mixed[out.name]}, inside {described(node)}"
            for k, body in enumerate(returned_values(node, sub)):
                if k == len(returns):
                    returns.append([])
                returns[k].append((inner.names, inner.shapes.get(body)))
        for k, made in enumerate(node.output[: len(returns)]):
            taken = returns[k][0][1] if node.op_type == "If" and len(returns[k]) == 1 else None
            if taken is not None and self.shapes.get(made) is None:  # the one branch that runs: its shape
                self.shapes.refine(made, taken)  # (torch's `if x.dim() == 1: x = x[None]`; a tester, s65)
            self.names.adopt(returns[k], self.shapes.get(made))  # an If's branches must agree to name it
        return None

    def _folded(self, node: onnx.NodeProto) -> np.ndarray | None:
        """The node's value where its inputs are small constants, or a rank outside Loop and Scan
        bodies (a carried value may change by turns; an If's branch runs once; constant_fold)."""
        values = [self._constant(node, i, MAX_ELEMENTS) for i in range(len(node.input))]
        if self.ranks:
            return folded(node, values, self.shapes.get, self.makers.get, self.opset)
        return folded(node, values, opset=self.opset)

    def _own_row_pick(self, node: onnx.NodeProto) -> bool:
        """A Gather, GatherND or ScatterND at each row's own place (onnx_row_positions.py), its data
        and a ScatterND's updates not made from the batch's size, its data carrying the batch on no
        other axis (zeros(N, N): an own index there reaches as far as the batch; a tester, s52)."""
        if node.op_type not in ("Gather", "GatherND", "ScatterND"):
            return False
        if not self.values.sized.keys().isdisjoint(name for i, name in enumerate(node.input) if i != 1):
            return False
        data = self.shapes.get(node.input[0]) or []
        along = int_attribute(node, "axis", 0) % len(data) if data and node.op_type == "Gather" else 0
        if any(dim in self.batch for at, dim in enumerate(data) if at != along):
            return False
        return self.values.positions.own_rows(node, self._row_size, self._lineage)

    def _mixes(self, node: onnx.NodeProto) -> str | None:
        """Why the node mixes rows of the batch (None: it does not, or it cannot be told)."""
        if foreign(node, self.opset):
            return self.foreign.mixes(node)
        unread = self.foreign.unread(node, self.mixed)
        if unread is not None:
            return unread
        if self._own_row_pick(node):
            # The rows' axis of its output is the batch's: a Softmax over it mixes (a tester, s51).
            out = self.shapes.get(node.output[0]) or []
            axis = int_attribute(node, "axis", 0) if node.op_type == "Gather" else 0
            self.names.mark(out[axis] if -len(out) <= axis < len(out) else None)
            self.values.picked(node.output[0])  # its values are its rows', not made from the size
            return None
        if node.op_type in RESHAPE_OPS:  # read first: a fold it finds names a size made from the batch's
            before, after = self.shapes.get(node.input[0]), self.shapes.get(node.output[0])
            folded_by = multiple_fold(node, self.values, self.constants, self.shapes.get)
            moved = self.names.reshaped(node, before, after, folded_by)
            constant = partial(self._constant, node)
            moved = moved or self.values.unread(node, self.shapes.get, constant)  # two dims unknown
            moved = moved or self.values.reads_size(node, self.shapes.get, constant)
            return moved or unplaced_reshape(node, self.values, self.shapes.get, constant)
        sized = self.values.reads_size(node, self.shapes.get, partial(self._constant, node))
        if sized is not None:
            return sized
        if (table := table_mixing(node, self.shapes.get, self.batch)) is not None:
            return table
        if (paired := self.values.rankless.paired(node)) is not None:
            return paired  # the batch on two axes in a branch of an If of other shapes
        if node.op_type in BROADCAST_OPS:
            return self._broadcast_pair(node)
        if node.op_type in ("Pad", "Tile", "Expand", "Resize", "Upsample", "Squeeze"):
            constant_at = partial(self._constant, node)
            grown = grown_rows(node, self.shapes.get, constant_at, self.partial, self.batch, self.opset)
            if grown is not None or node.op_type not in MIXING_OPS:
                return grown
        if node.op_type not in MIXING_OPS:
            return self.foreign.unknown(node, partial(self._where, node))
        if node.op_type == "Scan":
            return self._scan(node)
        if node.op_type == "ConcatFromSequence":
            maker = self.makers.get(node.input[0])
            return sequence_concat(node, maker, self._lineage, self.shapes.get, self.batch)
        if node.op_type in SCALED_OPS and (paired := self._broadcast_pair(node, scale_pair)) is not None:
            return paired  # a scale carrying the batch where the input has another axis
        read = {"Einsum": einsum_mixing, "Concat": concat_pinned, "MatMul": matmul_pair}.get(node.op_type)
        if read is not None and (why := self._broadcast_pair(node, read)) is not None:
            return why  # two letters for the batch, the batch in a `...` broadcast, the batch pinned
        dims = [self.shapes.get(name) or [] for name in node.input]
        lengths = [d[0] if len(d) == 1 and isinstance(d[0], int) else None for d in dims]
        constant = partial(self._constant, node)
        cleared = self.pools.cleared(node)
        for index, axes in mixed_axes(node, [len(d) for d in dims], self.opset, constant, lengths):
            if index not in cleared and (unplaced := self._unplaced(node, index)) is not None:
                return unplaced
            for axis in axes if index not in cleared else ():
                if self._is_batch(node, index, axis) and not self.values.whole(
                    node, axis, self.shapes.get, constant
                ):
                    note = COMPUTED_SLICE if computed_bounds(node, constant) else ""
                    return f"{described(node)} works along {self._axis(node, index, axis)}{note}"
        pair = paired_axes(node)
        if pair is not None and all(self._is_batch(node, i, axis) for i, axis in pair):
            rows, columns = (self._where(node, i, axis) for i, axis in pair)
            return (
                f"{described(node)} pairs each row of the batch with every other: its rows come "
                f"from {rows} and its columns from {columns}, both the batch's axis"
            )
        return None

    def _broadcast_pair(
        self, node: onnx.NodeProto, read: Callable[..., str | None] = broadcast_pair
    ) -> str | None:
        dims = [self.shapes.get(name) or value_shape(self.constants.get(name)) for name in node.input]
        unknown = [bool(n) and n not in self.constants and self.shapes.get(n) is None for n in node.input]
        free: list[bool | None] = (  # made from no batched input; else how each is read
            [not self.batched & self.value_lineage.of(n) for n in node.input]
            if read is concat_pinned
            else self.value_lineage.reads(node.input, unknown, self.batched, self.mixed)
        )
        return read(node, dims, self.batch, partial(self._where, node), free)

    def _scan(self, node: onnx.NodeProto) -> str | None:
        """A Scan with state along the batch's axis of an input carries its state row to row."""
        states, axes = scan_inputs(node, self.opset)
        for j, axis in enumerate(axes):
            if states > 0 and self._is_batch(node, states + j, axis):
                return f"{described(node)} carries its state along {self._axis(node, states + j, axis)}"
        return None

    def _row_size(self, name: str, axis: int) -> Dim:
        dims = self.shapes.get(name)
        return None if dims is None or not -len(dims) <= axis < len(dims) else self.names.row_size(dims[axis])

    def _unplaced(self, node: onnx.NodeProto, index: int) -> str | None:
        """Why a mixing op's input made from a batched input cannot be read: onnx gave it no shape,
        so where the batch's axis is in it is not known (an Unsqueeze at computed axes, s58)."""
        name = node.input[index] if index < len(node.input) else ""
        known = name in self.mixed or self.shapes.get(name) is not None  # (mixed: its reason is better)
        if not name or known or not self.batched & self._lineage(name):
            return None
        if not self.top and not moved_unseen(name, self.makers, self.shapes.get, self.constants.__contains__):
            return None  # in a body, only where an op moved the batch unseen (an If may return 2 ranks)
        return f"{described(node)} works along axes of '{name}', made from the batch: its shape is not known"

    def _is_batch(self, node: onnx.NodeProto, index: int, axis: int) -> bool:
        dims = self.shapes.get(node.input[index]) if index < len(node.input) else None
        return dims is not None and -len(dims) <= axis < len(dims) and dims[axis] in self.batch

    def _axis(self, node: onnx.NodeProto, index: int, axis: int) -> str:
        dims = self.shapes.get(node.input[index]) or []
        dim = dims[axis] if -len(dims) <= axis < len(dims) else None
        return f"the batch's axis, {self._where(node, index, axis)}{self.names.note(dim)}"

    def _where(self, node: onnx.NodeProto, index: int, axis: int) -> str:
        dims = self.shapes.get(node.input[index]) or value_shape(self.constants.get(node.input[index]))
        return f"axis {axis % max(len(dims), 1)} of '{node.input[index]}' {self.names.shown(dims)}"

    def _constant(self, node: onnx.NodeProto, index: int, limit: int = MAX_READ) -> np.ndarray | None:
        """The node's input `index`'s value where the graph holds it, of at most `limit` values."""
        return value_array(self.constants.get(node.input[index]) if index < len(node.input) else None, limit)
