"""What onnxruntime computes of a graph's shapes that onnx's inference reads otherwise, written into
the row-mixing reading's copy of the graph (onnx_mixing_probe.py) so that its dims prove only what
onnxruntime computes (a tester, session 67).

A Cast of an integer to 8 or 16 bits wraps a length (uint8(260) is 4) where onnx's data propagation
passes the length on as it is: x.view(-1, int64(uint8(H)), K) was read as N rows, batched, and a
batch of two at H = 260 was answered 130 rows (since session 51). A Mod by 2 ** bits is written
before such a Cast (the same value, two's complement): the inference stops there.

(onnxruntime's ReshapeFusion, which runs a Reshape's one computed entry as -1 and never checks it,
is turned off in the server's sessions instead: onnxruntime_backend.UNCHECKING_OPTIMIZERS.)
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from server.backends.graph_names import free_prefix, graphs, int_attribute

_T = onnx.TensorProto
_NARROW: dict[int, int] = {
    int(_T.INT8): 8,
    int(_T.UINT8): 8,
    int(_T.INT16): 16,
    int(_T.UINT16): 16,
}  # bits kept
_WIDE_INTEGERS: dict[int, type[np.integer]] = {int(_T.INT64): np.int64, int(_T.INT32): np.int32}


def as_onnxruntime_runs(model: onnx.ModelProto) -> bool:
    """Write the rewrite above into `model` (inferred: its value infos give each Cast's input type),
    in every graph; whether any was written."""
    written = False
    for graph in graphs(model.graph):
        infos = {value.name: value for value in (*graph.input, *graph.value_info, *graph.output)}
        written = _wrapped_casts(graph, infos) | written
    return written


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
