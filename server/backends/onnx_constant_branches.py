"""Ifs of the main graph whose condition is a constant at load, replaced by the branch they take
in the copy of the graph the row-mixing reading infers shapes on (onnx_mixing_probe.py).

torch's `if x.dim() == 2: x = x.unsqueeze(0)` (RNN, GRU, LSTM, MultiheadAttention, Conv1d when
scripted) exports an If on a rank test: Equal(Size(Shape(x)), 2), a Not of it. onnx's inference
leaves the If's output of no rank when its branches return two ranks, and every op after it
unshaped: a MultiheadAttention's head fold after it had been refused (a tester, session 65). The
condition is the same for every request, so only its branch runs: inlined, onnx shapes what
follows. A condition is folded from small constants and ranks (onnx_constant_fold.py); an
initializer a client may send is no constant. An If is left as it is where a name of its branch
is also a name of the main graph, or whose branch holds bodies of its own (`_holds_bodies`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from server.backends.graph_names import ONNX_DOMAIN, attribute, subgraphs
from server.backends.onnx_constant_fold import MAX_ELEMENTS, folded, small_constant
from server.backends.onnx_mixing_graph import standard_opset, value_dims


def inline_constant_branches(model: onnx.ModelProto) -> bool:
    """Replace each If of `model`'s main graph (inferred) whose condition folds to a constant by its
    taken branch's nodes and initializers, its outputs by Identities of the branch's. Whether any was."""
    graph = model.graph
    sent = {value.name for value in graph.input}
    values: dict[str, np.ndarray] = {
        init.name: numpy_helper.to_array(init)
        for init in graph.initializer
        if init.name not in sent and init.data_location != onnx.TensorProto.EXTERNAL and _small(init)
    }
    infos = {value.name: value for value in (*graph.input, *graph.value_info, *graph.output)}
    makers = {out: node for node in graph.node for out in node.output if out}
    taken_at: dict[int, onnx.GraphProto] = {}
    for at, node in enumerate(graph.node):
        if node.op_type == "If" and node.domain in ONNX_DOMAIN and node.input[0] in values:
            branch = attribute(
                node, "then_branch" if values[node.input[0]].reshape(-1)[0] else "else_branch", None
            )
            if isinstance(branch, onnx.GraphProto) and _apart(branch, graph) and not _holds_bodies(branch):
                taken_at[at] = branch
            continue
        value = _fold(node, values, infos, makers, standard_opset(model))
        if value is not None and node.output and node.output[0]:
            values[node.output[0]] = value
    if not taken_at:
        return False
    nodes: list[onnx.NodeProto] = []
    for at, node in enumerate(graph.node):
        branch = taken_at.get(at)
        if branch is None:
            nodes.append(node)
            continue
        nodes.extend(branch.node)
        graph.initializer.extend(branch.initializer)
        for made, returned in zip(node.output, branch.output, strict=False):
            if made:
                nodes.append(onnx.helper.make_node("Identity", [returned.name], [made]))
    graph.ClearField("node")
    graph.node.extend(nodes)
    return True


def _fold(
    node: onnx.NodeProto,
    values: Mapping[str, np.ndarray],
    infos: Mapping[str, onnx.ValueInfoProto],
    makers: Mapping[str, onnx.NodeProto],
    opset: int,
) -> np.ndarray | None:
    if node.op_type == "Constant":
        return small_constant(node)
    known = [values.get(name) for name in node.input]

    def dims(name: str) -> list[int | str | None] | None:
        info = infos.get(name)
        return value_dims(info) if info is not None else None

    return folded(node, known, dims, makers.get, opset)


def _small(tensor: onnx.TensorProto) -> bool:
    return int(np.prod(tensor.dims)) <= MAX_ELEMENTS


def _holds_bodies(branch: onnx.GraphProto) -> bool:
    """Whether the branch holds an If, a Loop or a Scan of its own: its walk reads their values of
    no known shape as a body's (Silero VAD's decoder, inside its sample rate's If; inlined, its
    If of two ranks left a Conv's input of no known shape in the main graph, refused)."""
    return any(next(subgraphs(node), None) is not None for node in branch.node)


def _apart(branch: onnx.GraphProto, graph: onnx.GraphProto) -> bool:
    """Whether no name the branch makes is a name of the main graph (inlined, none is shadowed)."""
    outer = {value.name for value in (*graph.input, *graph.initializer)}
    outer.update(out for node in graph.node for out in node.output)
    made = {out for node in branch.node for out in node.output} | {init.name for init in branch.initializer}
    return outer.isdisjoint(made)
