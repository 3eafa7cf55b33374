"""Graph outputs whose first dim the data's values size (NonZero, Unique, Compress,
NonMaxSuppression, StringSplit upstream, or a Reshape, Range, Tile, TopK, OneHot, ... whose size
input is computed from the data's values), so it is not the batch.

Such an output (NonZero's indices [nnz, 2], a detector's kept boxes [k, 6]) has a variable first
dim that no symbol tells from the batch. Batched, a run whose output happened to hold as many rows
as the run was split by rows: of three coalesced requests, two got another request's indices, OK
(Triton does the same). Read here, before any session is made, config completion treats such an
output like one whose first dim is provably not the batch: completed unbatched, and a config that
says `max_batch_size` > 0 fails its load naming the output and the op.

An output downstream of such an op may still be batched (a mask computed with NonZero and applied
row by row): onnx's shape inference, run only when some output is suspect, clears an output whose
first dim it carries through from an input's first dim, and so does a graph that declares the
output's first dim with an input's batch symbol (the exporter's word, e.g. torch's dynamic_axes).
A Loop's outputs are data-sized when its trip count, its first condition or the condition its
body computes is the data's (its scan outputs are as long as its turns; a carried value may grow
a row a turn). A carried value is the data's when its first value is, or when the body makes its
next one from the data. An overridable initializer (an
initializer also listed as a graph input) is the data's when the config lets clients send it (`fed`).
Not covered: custom-domain ops, and sizes read by ops outside SIZE_INPUTS.
"""

from __future__ import annotations

from collections.abc import Collection

import onnx

from server.backends.graph_names import ONNX_DOMAIN, described, subgraphs
from server.backends.node_order import ordered
from server.backends.onnx_output_shapes import inference_probe, inferred_shapes, input_first_dims

# Standard ops whose output's size depends on its input's values, not only on its input's shape.
DATA_SIZED_OPS = frozenset({"NonZero", "Unique", "Compress", "NonMaxSuppression", "StringSplit"})
# Standard ops that take an output size from some inputs' values: sized by the data when one of
# those inputs is computed from the data's values (not from shapes alone: Shape, Size).
SIZE_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,),
    "Expand": (1,),
    "Tile": (1,),
    "ConstantOfShape": (0,),
    "Range": (0, 1, 2),
    "Slice": (1, 2, 4),
    "Pad": (1,),
    "Resize": (2, 3),
    "Upsample": (1,),
    "Split": (1,),
    "Loop": (0, 1),  # trip count, first condition
    "TopK": (1,),  # k
    "OneHot": (1,),  # depth
    "CenterCropPad": (1,),  # shape
    "Col2Im": (1, 2),  # image_shape, block_shape
}
SHAPE_ONLY_OPS = frozenset({"Shape", "Size"})  # read their input's shape, never its values


def data_sized_outputs(model: onnx.ModelProto, fed: Collection[str] = ()) -> dict[str, str]:
    """Each graph output whose first dim is sized by the data's values, and why (the op), for
    outputs not shown to carry an input's first dim. `fed`: overridable initializers that clients
    may send (listed as inputs in the config), the data's too."""
    initializers = {init.name for init in model.graph.initializer}
    walk = _Walk({v.name for v in model.graph.input if v.name not in initializers or v.name in fed})
    walk.graph(model.graph)
    suspects = {out.name: walk.origins[out.name] for out in model.graph.output if out.name in walk.origins}
    if not suspects:
        return {}
    cleared = _declared_batch(model, suspects) | _inferred_batch(model, suspects)
    return {name: why for name, why in suspects.items() if name not in cleared}


class _Walk:
    """One pass over a graph in its (topological) order: `origins` maps each tensor whose size
    the data's values set to the op that does, `valued` holds the tensors whose values the data's
    values set."""

    def __init__(self, valued: set[str]) -> None:
        self.origins: dict[str, str] = {}
        self.valued = set(valued)

    def graph(self, graph: onnx.GraphProto) -> None:
        for node in ordered(graph):  # as onnxruntime runs it, whatever order it is listed in
            why, valued = self._node(node)
            for name in node.output:
                if name and why is not None:
                    self.origins[name] = why
                if name and valued:
                    self.valued.add(name)

    def _node(self, node: onnx.NodeProto) -> tuple[str | None, bool]:
        """Why the node's outputs are sized by the data (None: they are not), and whether their
        values are the data's."""
        standard = node.domain in ONNX_DOMAIN
        valued = node.op_type not in SHAPE_ONLY_OPS and any(n in self.valued for n in node.input)
        if standard and node.op_type in DATA_SIZED_OPS:
            return described(node), valued
        if standard and node.op_type == "Loop":
            return self._loop(node, valued)
        if standard:
            for i in SIZE_INPUTS.get(node.op_type, ()):
                if i < len(node.input) and node.input[i] in self.valued:
                    return f"{described(node)}, from its input '{node.input[i]}'", valued
        for name in node.input:
            if name in self.origins:
                return self.origins[name], valued
        for sub in subgraphs(node):  # If/Scan/...: an op inside, or outer tensors it reads
            inner = self._inside(sub, {i.name for i in sub.input} if valued else set())
            valued = valued or any(out.name in inner.valued for out in sub.output)
            if (why := _inner_origin(node, sub, inner)) is not None:
                return why, valued
        return None, valued

    def _loop(self, node: onnx.NodeProto, valued: bool) -> tuple[str | None, bool]:
        """A Loop: an origin flowing in or made in its body, or turns the data sets (its trip count,
        its first condition, the condition its body computes), size every output: its scan outputs
        are as long as its turns, and a carried value may grow a row a turn (Concat). One that
        keeps its rows (a loop run to convergence, row by row) is cleared when the graph names its
        first dim with the inputs' batch symbol (`_declared_batch`), or onnx's inference shows it."""
        for name in node.input:
            if name in self.origins:
                return self.origins[name], valued
        condition = None  # the body's condition, when the data's
        body = next(subgraphs(node), None)
        if body is not None:
            inner = self._loop_body(node, body)
            valued = valued or any(out.name in inner.valued for out in body.output)
            if (why := _inner_origin(node, body, inner)) is not None:
                return why, valued
            if body.output and body.output[0].name in inner.valued:
                condition = body.output[0].name
        for i in SIZE_INPUTS["Loop"]:
            if i < len(node.input) and node.input[i] in self.valued:
                return f"{described(node)}, from its input '{node.input[i]}'", valued
        if condition is not None:
            return f"{described(node)}, whose body's condition '{condition}' is the data's", valued
        return None, valued

    def _inside(self, sub: onnx.GraphProto, seeds: set[str]) -> _Walk:
        inner = _Walk(self.valued | seeds)
        inner.origins = dict(self.origins)
        inner.graph(sub)
        return inner

    def _loop_body(self, node: onnx.NodeProto, body: onnx.GraphProto) -> _Walk:
        """The walk of a Loop's body whose inputs (turn number, condition, carried values) are
        seeded as the data's where they can be: the turn number never; the condition and each
        carried value when its first value is the data's, or when the body's next one is (to a
        fixed point: each pass can only add seeds)."""
        carried = [value.name for value in body.input[1:]]  # condition, then the carried values
        seeds = {name for name, first in zip(carried, node.input[1:], strict=False) if first in self.valued}
        while True:
            inner = self._inside(body, seeds)
            more = {name for name, nxt in zip(carried, body.output, strict=False) if nxt.name in inner.valued}
            if more <= seeds:
                return inner
            seeds |= more


def _inner_origin(node: onnx.NodeProto, sub: onnx.GraphProto, inner: _Walk) -> str | None:
    """Why an output of `sub` (walked as `inner`) is sized by the data, said of its node."""
    for out in sub.output:
        if out.name in inner.origins:
            return f"{inner.origins[out.name]} inside {node.op_type} node '{node.name or node.output[0]}'"
    return None


def _first_symbol(value: onnx.ValueInfoProto) -> str:
    dims = value.type.tensor_type.shape.dim
    return dims[0].dim_param if dims else ""


def _declared_batch(model: onnx.ModelProto, suspects: dict[str, str]) -> set[str]:
    firsts = input_first_dims(model)
    return {out.name for out in model.graph.output if out.name in suspects and _first_symbol(out) in firsts}


def _inferred_batch(model: onnx.ModelProto, suspects: dict[str, str]) -> set[str]:
    """Suspect outputs whose first dim onnx's shape inference carries from an input's first dim,
    in a copy whose unnamed input first dims are named and whose suspects' shapes are cleared."""
    probe = inference_probe(model, set(suspects))
    firsts = input_first_dims(probe)
    try:
        inferred = inferred_shapes(probe)
    except Exception:  # onnx refuses some graphs onnxruntime runs: no proof, the suspects stay
        return set()
    return {
        out.name for out in inferred.graph.output if out.name in suspects and _first_symbol(out) in firsts
    }
