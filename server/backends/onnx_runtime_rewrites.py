"""What onnxruntime does to a graph's shapes that onnx's inference does not know, written into the
row-mixing reading's copy of the graph (onnx_mixing_probe.py) so that its dims prove only what
onnxruntime computes (a tester, session 67).

- onnxruntime's ReshapeFusion (core/optimizer/reshape_fusion.cc, at its default optimizations)
  gives a Reshape whose shape is a Concat read by it alone a constant shape: a constant entry as
  it is, the Reshape's own input's dim at its own place (Shape -> Gather(i) -> Unsqueeze at entry i)
  as 0, and one other one-element entry as -1, which onnxruntime works out as the quotient and never
  checks. onnx's inference reads that entry's value instead: z [N, W] and x.view(N, W, K) of x
  [N, H, K] was read [N, W, K] and runs [N, H, K], so a later x.view(-1, W, K) read as N batched and
  gave two requests' rows as four, OK. Here such an entry is written -1, as onnxruntime runs it;
  not where a constant -1 is there already (onnxruntime fuses no second). Of two or more other
  entries, those that are another tensor's Shape entry at their own place may be read by
  onnxruntime as the input's own (where its inferred shapes compare equal): the one left, if one
  is, is written -1. (Two or more of that form and none other: which one onnxruntime would make -1
  cannot be told here; left as they are.)
- A Cast of an integer to 8 or 16 bits wraps a length (uint8(260) is 4) where onnx's data
  propagation passes the length on as it is: x.view(-1, int64(uint8(H)), K) was read as N rows.
  A Mod by 2 ** bits is written before it (the same value, two's complement): the inference stops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from server.backends.graph_names import ONNX_DOMAIN, free_prefix, graphs, int_attribute
from server.backends.onnx_mixing_graph import constant_value, value_dims

_T = onnx.TensorProto
_NARROW = {_T.INT8: 8, _T.UINT8: 8, _T.INT16: 16, _T.UINT16: 16}  # a Cast's `to` -> the bits it keeps
_WIDE_INTEGERS = {_T.INT64: np.int64, _T.INT32: np.int32}


@dataclass(frozen=True)
class _Entry:
    """A Concat input of a Reshape's shape: at input `index`, entry `place`; `shaped`: a Shape's
    entry of some tensor at its own place (onnxruntime may read it as the Reshape's input's)."""

    index: int
    place: int
    shaped: bool


def as_onnxruntime_runs(model: onnx.ModelProto) -> bool:
    """Write the rewrites above into `model` (inferred: its value infos say which inputs are of one
    element and of which type), in every graph; whether any was written."""
    written = False
    for graph in graphs(model.graph):
        infos = {value.name: value for value in (*graph.input, *graph.value_info, *graph.output)}
        written = _minus_ones(graph, infos) | written
        written = _wrapped_casts(graph, infos) | written
    return written


def _minus_ones(graph: onnx.GraphProto, infos: dict[str, onnx.ValueInfoProto]) -> bool:
    makers = {out: node for node in graph.node for out in node.output if out}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    outputs = {value.name for value in graph.output}
    constants = _constants(graph)
    written = False
    for reshape in list(graph.node):
        if reshape.op_type != "Reshape" or reshape.domain not in ONNX_DOMAIN or len(reshape.input) < 2:
            continue
        shape = reshape.input[1]
        concat = makers.get(shape)
        if concat is None or concat.op_type != "Concat" or int_attribute(concat, "axis", 0) not in (0, -1):
            continue
        if readers.get(shape, 0) != 1 or shape in outputs:
            continue
        other = _unchecked(concat, reshape.input[0], makers, constants, infos)
        if other is None:
            continue
        prefix = free_prefix(graph, f"{shape}/as_run")
        minus = onnx.helper.make_node(
            "Constant", [], [f"{prefix}minus_one"], value=numpy_helper.from_array(np.array([-1], np.int64))
        )
        inputs = list(concat.input)
        inputs[other] = minus.output[0]
        fused = onnx.helper.make_node("Concat", inputs, [f"{prefix}shape"], axis=0)
        reshape.input[1] = fused.output[0]
        at = list(graph.node).index(reshape)
        graph.node.insert(at, fused)
        graph.node.insert(at, minus)
        written = True
    return written


def _unchecked(
    concat: onnx.NodeProto,
    root: str,
    makers: dict[str, onnx.NodeProto],
    constants: dict[str, np.ndarray],
    infos: dict[str, onnx.ValueInfoProto],
) -> int | None:
    """The Concat input onnxruntime would make -1 (None: none, or no fusion)."""
    others: list[_Entry] = []
    place = 0
    for index, name in enumerate(concat.input):
        value = constants.get(name)
        if value is not None:
            if value.dtype.kind not in "iu" or value.ndim > 1 or -1 in value.reshape(-1).tolist():
                return None  # a -1 already, or no shape onnxruntime reads: no fusion to write
            place += value.size
            continue
        dims = value_dims(infos[name]) if name in infos else None
        if dims is None or dims != [1]:
            return None  # not one element: onnxruntime fuses nothing
        source = _shape_entry(name, place, makers, constants)
        if source != root:
            others.append(_Entry(index, place, source is not None))
        place += 1
    plain = [entry for entry in others if not entry.shaped]
    if len(others) == 1:
        return others[0].index
    return plain[0].index if len(plain) == 1 else None


def _shape_entry(
    name: str, place: int, makers: dict[str, onnx.NodeProto], constants: dict[str, np.ndarray]
) -> str | None:
    """The tensor whose Shape's entry `place` `name` is (Unsqueeze(Gather(Shape(t), place), 0))."""
    unsqueeze = makers.get(name)
    if unsqueeze is None or unsqueeze.op_type != "Unsqueeze" or not unsqueeze.input:
        return None
    gather = makers.get(unsqueeze.input[0])
    if gather is None or gather.op_type != "Gather" or len(gather.input) < 2:
        return None
    index = constants.get(gather.input[1])
    shape = makers.get(gather.input[0])
    if index is None or index.size != 1 or shape is None or shape.op_type != "Shape" or shape.attribute:
        return None
    return shape.input[0] if int(index.reshape(-1)[0]) == place else None


def _wrapped_casts(graph: onnx.GraphProto, infos: dict[str, onnx.ValueInfoProto]) -> bool:
    written = False
    for cast in list(graph.node):
        bits = _NARROW.get(int_attribute(cast, "to", 0)) if cast.op_type == "Cast" and cast.input else None
        info = infos.get(cast.input[0]) if bits is not None else None
        kind = _WIDE_INTEGERS.get(info.type.tensor_type.elem_type) if info is not None else None
        if bits is None or kind is None:
            continue
        prefix = free_prefix(graph, f"{cast.input[0]}/wrapped")
        modulus = onnx.helper.make_node(
            "Constant", [], [f"{prefix}modulus"], value=numpy_helper.from_array(np.array(1 << bits, kind))
        )
        kept = onnx.helper.make_node("Mod", [cast.input[0], modulus.output[0]], [f"{prefix}kept"], fmod=0)
        cast.input[0] = kept.output[0]
        at = list(graph.node).index(cast)
        graph.node.insert(at, kept)
        graph.node.insert(at, modulus)
        written = True
    return written


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """The graph's small constants (initializers a client cannot send, Constant nodes)."""
    sent = {value.name for value in graph.input}
    found = {
        init.name: numpy_helper.to_array(init)
        for init in graph.initializer
        if init.name not in sent
        and init.data_location != onnx.TensorProto.EXTERNAL
        and np.prod(init.dims) <= 64
    }
    for node in graph.node:
        value = constant_value(node) if node.op_type == "Constant" else None
        if isinstance(value, onnx.TensorProto) and np.prod(value.dims) <= 64:
            found[node.output[0]] = numpy_helper.to_array(value)
        elif isinstance(value, np.ndarray):
            found[node.output[0]] = value
    return found
