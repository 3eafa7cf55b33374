"""Shapes for the values onnx's inference left without one in the row-mixing reading's copy of a
graph (onnx_mixing_probe.py), worked out node by node in one pass and given back as value infos.

A Split by lengths computed from the shape (a rotate-half, a q/k split) leaves its outputs without a
shape, and onnx's inference then leaves every op after it so: the reading refused a Softmax, a
LayerNormalization or a MatMul after it (tester x, session 58). Three rounds of filling and
inferring again reached three layers only (tester y: a fourth refused). Here each node whose
outputs have no shape gets the dims its form gives (onnx_filled_shapes.py; a Split's, a Slice's,
an STFT's) or, failing that, onnx's inference of that one node from its inputs' shapes, in the
graph's order: one pass reaches any depth.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from server.backends.graph_names import ONNX_DOMAIN, subgraphs
from server.backends.onnx_filled_shapes import filled_dims
from server.backends.onnx_mixing_graph import Dims, constant_value, standard_opset, value_dims

_KEEPS_TYPE = frozenset({"Split", "Slice", "Transpose", "Unsqueeze", "Concat", "STFT"})  # input 0's type


def seed_unshaped(model: onnx.ModelProto) -> bool:
    """Give the main graph's values without a shape what their node gives them; whether any was."""
    graph = model.graph
    opset = standard_opset(model)
    infos = {v.name: v for v in (*graph.input, *graph.value_info, *graph.output)}
    outputs = {v.name for v in graph.output}
    values: dict[str, onnx.TensorProto] = {i.name: i for i in graph.initializer}
    for node in graph.node:
        found = constant_value(node) if node.op_type == "Constant" else None
        if found is not None:
            values[node.output[0]] = (
                found if isinstance(found, onnx.TensorProto) else numpy_helper.from_array(found)
            )

    def dims_of(name: str) -> Dims | None:  # an initializer's dims where no value info names it
        return (
            value_dims(infos[name]) if name in infos else list(values[name].dims) if name in values else None
        )

    def unshaped(name: str) -> bool:
        return bool(name) and name not in outputs and dims_of(name) is None

    seeded = False
    for node in graph.node:
        if node.domain not in ONNX_DOMAIN or not any(unshaped(out) for out in node.output):
            continue
        if any(True for _ in subgraphs(node)) or not node.input or dims_of(node.input[0]) is None:
            continue
        for out, made in zip(node.output, _outputs(node, infos, values, dims_of, opset), strict=False):
            if made is not None and unshaped(out):
                infos[out] = onnx.helper.make_value_info(out, made)
                graph.value_info.append(infos[out])
                seeded = True
    return seeded


def _outputs(
    node: onnx.NodeProto,
    infos: dict[str, onnx.ValueInfoProto],
    values: dict[str, onnx.TensorProto],
    dims_of: object,
    opset: int,
) -> list[onnx.TypeProto | None]:
    """Each output's type: the op's form where it gives dims, else onnx's inference of the node."""

    def constant(index: int) -> np.ndarray | None:
        found = values.get(node.input[index]) if index < len(node.input) else None
        return None if found is None else numpy_helper.to_array(found)

    if node.op_type in _KEEPS_TYPE:
        first = node.input[0]
        elem = infos[first].type.tensor_type.elem_type if first in infos else values[first].data_type
        filled = filled_dims(node, dims_of, constant)  # type: ignore[arg-type]
        if any(d is not None for d in filled):
            return [None if d is None else onnx.helper.make_tensor_type_proto(elem, d) for d in filled]
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, "")
        types = {name: _type(name, infos, values) for name in node.input if name in infos or name in values}
        data = {name: values[name] for name in node.input if name in values}
        made = onnx.shape_inference.infer_node_outputs(schema, node, types, data)
    except Exception:
        return [None] * len(node.output)
    return [_shaped(made.get(out)) for out in node.output]


def _shaped(found: onnx.TypeProto | None) -> onnx.TypeProto | None:
    if found is None or not found.HasField("tensor_type") or not found.tensor_type.HasField("shape"):
        return None
    return found


def _type(
    name: str, infos: dict[str, onnx.ValueInfoProto], values: dict[str, onnx.TensorProto]
) -> onnx.TypeProto:
    if name in infos:
        return infos[name].type
    return onnx.helper.make_tensor_type_proto(values[name].data_type, list(values[name].dims))
