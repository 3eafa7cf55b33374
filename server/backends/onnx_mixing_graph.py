"""Reading a graph for the walk of onnx_row_mixing.py: tensor dims from the value infos onnx's
inference writes (read when first asked), the model's nodes at any depth, its standard opset, a
Constant node's value, a small constant's values, and the values a subgraph returns to its node."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping

import numpy as np
import onnx

from server.backends.graph_names import ONNX_DOMAIN, described, graphs, shape_read, subgraphs
from server.backends.onnx_data_sized import DATA_SIZED_OPS
from server.backends.onnx_mixing_ops import scan_inputs

Dims = list[int | str | None]
Value = onnx.TensorProto | np.ndarray  # a constant, made into an array only when read


def unnamed_first_dims(model: onnx.ModelProto) -> bool:
    initializers = {init.name for init in model.graph.initializer}
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name not in initializers and dims and not dims[0].HasField("dim_value"):
            return True
    return False


def all_nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
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


def standard_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ONNX_DOMAIN), 1)


def value_dims(value: onnx.ValueInfoProto) -> Dims | None:
    """A value info's dims: sizes, names, None where unknown; None where it has no shape."""
    tensor = value.type.tensor_type
    if not value.type.HasField("tensor_type") or not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]


Renamed = Callable[[Dims | None, Dims], None]  # told a tensor's dims as onnx had them, as refined


class Shapes:
    """Tensor name -> dims, read from a graph's value infos when first asked (a graph of 24,000
    nodes had spent 0.1 s making every one), else from the enclosing graph's."""

    def __init__(self, outer: Shapes | None = None) -> None:
        self._outer = outer
        self._infos: dict[str, onnx.ValueInfoProto] = {}
        self._dims: dict[str, Dims | None] = {}

    def add(self, graph: onnx.GraphProto) -> None:
        for value in (*graph.input, *graph.value_info, *graph.output):
            self._infos[value.name] = value

    def refine(
        self, name: str, dims: Dims, renamed: Callable[[Dims | None, Dims], None] | None = None
    ) -> None:
        """`name`'s dims as the walk works them out where onnx could not (a Reshape's); `renamed` told
        what onnx had named them (onnx_batch_names.py: a name it made up for the batch's axis)."""
        if renamed is not None:
            renamed(self.get(name), dims)
        self._dims[name] = dims

    def get(self, name: str) -> Dims | None:
        if name not in self._dims:
            info = self._infos.get(name)
            dims = value_dims(info) if info is not None else None
            if dims is None and self._outer is not None:
                dims = self._outer.get(name)
            self._dims[name] = dims
        return self._dims[name]


def value_shape(value: Value | None) -> Dims:
    """A constant's dims ([] where there is none: read as a scalar, which broadcasts alike)."""
    if isinstance(value, onnx.TensorProto):
        return list(value.dims)
    return list(value.shape) if value is not None else []


def value_array(found: Value | None, limit: int) -> np.ndarray | None:
    """A constant's values where it has at most `limit` and is not stored as external data (read
    relative to no folder here)."""
    if not isinstance(found, onnx.TensorProto):
        return found if found is None or found.size <= limit else None
    if found.data_location == onnx.TensorProto.EXTERNAL or math.prod(found.dims) > limit:
        return None
    value: np.ndarray = onnx.numpy_helper.to_array(found)
    return value


def constant_value(node: onnx.NodeProto) -> Value | None:
    for found in node.attribute:
        if found.name == "value":
            tensor: onnx.TensorProto = found.t
            return tensor
        if found.name in ("value_int", "value_ints"):
            return np.asarray(onnx.helper.get_attribute_value(found), dtype=np.int64)
    return None


def returned_values(node: onnx.NodeProto, body: onnx.GraphProto) -> list[str]:
    """The values a subgraph returns that become the node's outputs, in their order: an If's
    outputs, a Loop's carried values and scan outputs, a Scan's states."""
    if node.op_type == "If":
        return [out.name for out in body.output]
    if node.op_type == "Loop":
        return [out.name for out in body.output[1:]]
    if node.op_type == "Scan":
        return [out.name for out in body.output[: len(node.input) - len(scan_inputs(node)[1])]]
    return []


def outer_reads(node: onnx.NodeProto) -> list[str]:
    """The names `node`'s bodies (and theirs) read from the graphs around it: what its outputs are
    made from besides its inputs (an If branch returning a reshape of the outer x)."""
    read: list[str] = []
    for body in subgraphs(node):
        own = {value.name for value in (*body.input, *body.initializer)}
        own.update(name for inner in body.node for name in inner.output)
        for inner in body.node:
            for name in (*inner.input, *(n for n in outer_reads(inner))):
                if name and name not in own and name not in read:
                    read.append(name)
        read.extend(out.name for out in body.output if out.name not in own and out.name not in read)
    return read


def made_from(
    name: str, lineage: dict[str, frozenset[str]], makers: Mapping[str, onnx.NodeProto]
) -> frozenset[str]:
    """The graph inputs `name` is made from (each tensor's producer in `makers`), kept in `lineage`.
    A function: a walk's method held by onnx_foreign_ops.py had made a cycle that kept each load's
    walk (0.35 MB for the demo MLP) to a later collection, measured in its footprint or not (s56)."""
    stack = [name]
    while stack:
        top = stack[-1]
        if top in lineage:
            stack.pop()
            continue
        maker = makers.get(top)
        sources = () if maker is None else [*maker.input, *outer_reads(maker)]
        waiting = [source for source in sources if source and source not in lineage]
        if waiting:
            stack.extend(waiting)
            continue
        made: frozenset[str] = frozenset()
        for source in sources:
            made = made | lineage.get(source, frozenset())
        lineage[top] = made
        stack.pop()
    return lineage[name]


class DataSizedLengths:
    """The lengths a data-sized op (NonZero, NonMaxSuppression, Unique, Compress) gives a tensor it
    makes from the batch, and every tensor made from one after it: their dims onnx could not name
    (None, or its own `unk__` names). A Shape or a Size reading one reads a length set by every
    row's values: a NonMaxSuppression's detections, counted over every image of the batch, had
    been taken as each request's own count, OK, and so after a Reshape to [-1] or a whole Slice
    (testers, session 58). So too an If whose branch every row's values choose: its branches may
    give its output other lengths, or other ranks (session 65)."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}  # such a dim's name -> the op that set the length
        self.tensors: dict[str, str] = {}  # a tensor made from such a length -> that op

    def _origin(self, node: onnx.NodeProto, dims_of: Callable[[str], Dims | None]) -> str | None:
        for name in (name for name in node.input if name):
            if name in self.tensors:
                return self.tensors[name]
            found = next(
                (self.names[d] for d in dims_of(name) or [] if isinstance(d, str) and d in self.names), None
            )
            if found is not None:
                return found
        return None

    def see(self, node: onnx.NodeProto, mixes: bool, dims_of: Callable[[str], Dims | None]) -> None:
        made = node.op_type in DATA_SIZED_OPS and mixes
        origin = described(node) if made else self._origin(node, dims_of)
        if origin is None:  # a body's value returned (an If's branch, a Loop's state; a tester, s58)
            returned = (out.name for sub in subgraphs(node) for out in sub.output)
            origin = next((self.tensors[name] for name in returned if name in self.tensors), None)
        if origin is None and mixes and node.op_type == "If":
            origin = described(node)  # its branch chosen by every row's values (session 65)
        if origin is None:
            return
        for out in (name for name in node.output if name):
            self.tensors[out] = origin
            for dim in dims_of(out) or []:
                if isinstance(dim, str) and dim.startswith("unk__"):
                    self.names.setdefault(dim, origin)

    def read(self, node: onnx.NodeProto, dims_of: Callable[[str], Dims | None]) -> str | None:
        """Why the Shape or Size `node` reads such a length (None: it does not)."""
        if node.op_type not in ("Shape", "Size") or not node.input:
            return None
        name = node.input[0]
        dims = dims_of(name)
        read = [] if dims is None else shape_read(node, dims) if node.op_type == "Shape" else dims
        maker = self.tensors.get(name) if dims is None or None in read else None
        maker = maker or next((self.names[d] for d in read if isinstance(d, str) and d in self.names), None)
        if maker is None:
            return None
        return f"{described(node)} reads a length of '{name}' that {maker} set from every row's values"
