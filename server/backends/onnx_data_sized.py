"""Graph outputs whose first dim the data's values size (NonZero, Unique, Compress,
NonMaxSuppression upstream), so it is not the batch.

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
Not covered: ops that take a size from a tensor computed from the data's values (Reshape, Expand,
Range, Tile with such a shape) and custom-domain ops.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx

# Standard ops whose output's size depends on its input's values, not only on its input's shape.
DATA_SIZED_OPS = frozenset({"NonZero", "Unique", "Compress", "NonMaxSuppression"})
_BATCH_SYMBOL = "__sluiceway_batch_{}"  # names an input's unnamed first dim for shape inference


def data_sized_outputs(model: onnx.ModelProto) -> dict[str, str]:
    """Each graph output whose first dim is sized by the data's values, and why (the op), for
    outputs not shown to carry an input's first dim."""
    origins = _origins(model.graph, {})
    suspects = {out.name: origins[out.name] for out in model.graph.output if out.name in origins}
    if not suspects:
        return {}
    cleared = _declared_batch(model, suspects) | _inferred_batch(model, suspects)
    return {name: why for name, why in suspects.items() if name not in cleared}


def _describe(node: onnx.NodeProto) -> str:
    return (
        f"{node.op_type} node '{node.name}'"
        if node.name
        else f"the {node.op_type} node making '{node.output[0]}'"
    )


def _origins(graph: onnx.GraphProto, outer: dict[str, str]) -> dict[str, str]:
    """Tensor name -> the data-sized op it depends on (graph order is topological in ONNX)."""
    origins = dict(outer)
    for node in graph.node:
        why = _node_origin(node, origins)
        if why is not None:
            for name in node.output:
                if name:
                    origins[name] = why
    return origins


def _node_origin(node: onnx.NodeProto, origins: dict[str, str]) -> str | None:
    if node.op_type in DATA_SIZED_OPS and node.domain in ("", "ai.onnx"):
        return _describe(node)
    for name in node.input:
        if name in origins:
            return origins[name]
    for sub in _subgraphs(node):  # If/Loop/Scan: an op inside, or an outer tensor that depends on one
        inside = _origins(sub, origins)
        for out in sub.output:
            if out.name in inside:
                return f"{inside[out.name]} inside {node.op_type} node '{node.name or node.output[0]}'"
    return None


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def _first_dims(model: onnx.ModelProto) -> set[str]:
    """The symbols of the graph inputs' first dims (initializers are not inputs here)."""
    initializers = {init.name for init in model.graph.initializer}
    firsts: set[str] = set()
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name not in initializers and dims and dims[0].dim_param:
            firsts.add(dims[0].dim_param)
    return firsts


def _first_symbol(value: onnx.ValueInfoProto) -> str:
    dims = value.type.tensor_type.shape.dim
    return dims[0].dim_param if dims else ""


def _declared_batch(model: onnx.ModelProto, suspects: dict[str, str]) -> set[str]:
    firsts = _first_dims(model)
    return {out.name for out in model.graph.output if out.name in suspects and _first_symbol(out) in firsts}


def _inferred_batch(model: onnx.ModelProto, suspects: dict[str, str]) -> set[str]:
    """Suspect outputs whose first dim onnx's shape inference carries from an input's first dim,
    in a copy whose unnamed input first dims are named and whose suspects' shapes are cleared."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    initializers = {init.name for init in probe.graph.initializer}
    for i, value in enumerate(probe.graph.input):
        dims = value.type.tensor_type.shape.dim
        if (
            value.name not in initializers
            and dims
            and not dims[0].HasField("dim_value")
            and not dims[0].dim_param
        ):
            dims[0].dim_param = _BATCH_SYMBOL.format(i)
    for out in probe.graph.output:
        if out.name in suspects and out.type.HasField("tensor_type"):
            out.type.tensor_type.ClearField("shape")
    firsts = _first_dims(probe)
    try:
        inferred = onnx.shape_inference.infer_shapes(probe, data_prop=True)
    except Exception:  # onnx refuses some graphs onnxruntime runs: no proof, the suspects stay
        return set()
    return {
        out.name for out in inferred.graph.output if out.name in suspects and _first_symbol(out) in firsts
    }
