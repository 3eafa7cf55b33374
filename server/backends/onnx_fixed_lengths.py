"""Shape arithmetic on lengths the model fixes, computed at load in the row-mixing reading's copy
of a graph (onnx_mixing_probe.py), and the graph's shapes inferred again.

onnx's inference carries a length through a Shape, a Gather, a Concat or an Add (its data
propagation), not through a Div, a Mod, a Cast or a Range. HF transformers' Swin pads its hidden
states to a multiple of its window by `(ws - W % ws) % ws`, rolls them by two Slices and a Concat,
and partitions them by `H // ws`: exported with fixed image sizes, every one of those lengths is a
number, but onnx's inference lost them at the Pad, named the windows' axes anew, and the reading
could not tell that the shifted windows' mask, expanded by `(N * nW) // nW`, is one copy per image:
refused for dynamic batching, each image its own (session 67, on a real export of transformers 5).

Here a Shape's entries onnx's inference gives as numbers (Gather(Shape(x), 1) of x [N, 16, 16, C]),
and every node of ONNX's own whose inputs are then all known and small (onnx_constant_fold.py),
are replaced by Constants of their values (integers and truth values: a float is kept as a value
for the folds after it, its node left for the readings that follow a float root, ViT's token grid
int(L ** 0.5); onnx_partial_ints.py), and the graph inferred again, until no node is left to
compute. A length is read only where the inference gives a number: the batch's, a name, stays a
name. The numbers come from the inputs' declared dims, which onnxruntime holds every request to,
and from the ops' own rules; not from shapes stored in the model (onnx_output_shapes.py leaves
those out of the inference). Only the main graph: a body's values change from turn to turn.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from server.backends.graph_names import ONNX_DOMAIN, shape_read, subgraphs
from server.backends.onnx_constant_fold import MAX_ELEMENTS, folded, small_constant
from server.backends.onnx_mixing_graph import Dims, standard_opset, value_dims

MAX_ROUNDS = 8  # each round's inference reaches the lengths its folds made numbers (Swin: four)


def with_fixed_lengths(
    inferred: onnx.ModelProto, infer: Callable[[onnx.ModelProto], onnx.ModelProto]
) -> onnx.ModelProto:
    """`inferred` with its computable shape arithmetic folded (see the module's text), inferred
    again by `infer` after each round that folded any."""
    for _ in range(MAX_ROUNDS):
        if not fold_fixed_lengths(inferred):
            break
        inferred = inferred_afresh(inferred, infer)
    return inferred


def inferred_afresh(
    model: onnx.ModelProto, infer: Callable[[onnx.ModelProto], onnx.ModelProto]
) -> onnx.ModelProto:
    """`model` inferred again as the first time: the main graph's value infos and its outputs'
    shapes cleared (no stale name of the last inference kept)."""
    model.graph.ClearField("value_info")
    for out in model.graph.output:
        if out.type.HasField("tensor_type"):
            out.type.tensor_type.ClearField("shape")
    return infer(model)


def fold_fixed_lengths(model: onnx.ModelProto) -> int:
    """Replace each node of `model`'s main graph whose value the load can compute (see the module's
    text) by a Constant of it, named as the node was; how many were."""
    graph = model.graph
    opset = standard_opset(model)
    infos = {value.name: value for value in (*graph.input, *graph.value_info, *graph.output)}
    outputs = {value.name for value in graph.output}
    sent = {value.name for value in graph.input}
    values: dict[str, np.ndarray] = {
        init.name: numpy_helper.to_array(init)
        for init in graph.initializer
        if init.name not in sent and _small(init)
    }
    makers: dict[str, onnx.NodeProto] = {}

    def dims(name: str) -> Dims | None:
        info = infos.get(name)
        return value_dims(info) if info is not None else None

    nodes: list[onnx.NodeProto] = []
    count = 0
    for node in graph.node:
        value = _value(node, values, dims, makers, opset)
        for out in node.output:
            makers[out] = node
        if value is not None and value.size <= MAX_ELEMENTS:
            values[node.output[0]] = value
            if node.op_type != "Constant" and node.output[0] not in outputs and value.dtype.kind in "biu":
                tensor = numpy_helper.from_array(value, node.output[0])
                node = onnx.helper.make_node("Constant", [], [node.output[0]], name=node.name, value=tensor)
                count += 1
        nodes.append(node)
    if count:
        graph.ClearField("node")
        graph.node.extend(nodes)
    return count


def _value(
    node: onnx.NodeProto,
    values: dict[str, np.ndarray],
    dims: Callable[[str], Dims | None],
    makers: dict[str, onnx.NodeProto],
    opset: int,
) -> np.ndarray | None:
    """The value of `node`'s one output where the load can compute it."""
    if node.op_type == "Constant":
        return small_constant(node)
    if node.domain not in ONNX_DOMAIN or len(node.output) != 1 or not node.output[0]:
        return None
    if next(subgraphs(node), None) is not None:
        return None
    if node.op_type in ("Shape", "Size") and node.input:
        read = dims(node.input[0])
        if read is None:
            return None
        entries = shape_read(node, read) if node.op_type == "Shape" else read
        if not all(isinstance(dim, int) for dim in entries):
            return None
        numbers = [int(dim) for dim in entries if isinstance(dim, int)]
        return np.asarray(numbers if node.op_type == "Shape" else int(np.prod(numbers)), np.int64)
    if node.op_type == "Gather" and len(node.input) == 2 and node.input[1] in values:
        picked = _shape_entries(node, values[node.input[1]], dims, makers)
        if picked is not None:
            return picked
    if not node.input or any(name and name not in values for name in node.input):
        return None
    return folded(node, [values.get(name) for name in node.input], dims, makers.get, opset)


def _shape_entries(
    node: onnx.NodeProto,
    index: np.ndarray,
    dims: Callable[[str], Dims | None],
    makers: dict[str, onnx.NodeProto],
) -> np.ndarray | None:
    """Gather(Shape(x), k) where each entry picked is a number in x's dims (the others may be names)."""
    maker = makers.get(node.input[0])
    if maker is None or maker.op_type != "Shape" or not maker.input or index.dtype.kind not in "iu":
        return None
    read = dims(maker.input[0])
    if read is None or any(attr.name == "axis" and attr.i not in (0, -1) for attr in node.attribute):
        return None
    entries = shape_read(maker, read)
    at = index.astype(np.int64)
    if at.size > MAX_ELEMENTS or np.any(at < -len(entries)) or np.any(at >= len(entries)):
        return None
    picked = [entries[int(i)] for i in at.reshape(-1)]
    if not all(isinstance(dim, int) for dim in picked):
        return None
    return np.asarray(picked, np.int64).reshape(at.shape)


def _small(init: onnx.TensorProto) -> bool:
    return init.data_location != onnx.TensorProto.EXTERNAL and int(np.prod(init.dims)) <= MAX_ELEMENTS
