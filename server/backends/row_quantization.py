"""Dynamic INT8 quantization made per row at load, so that a batched request's answer does not
depend on the other requests in its batch.

A dynamically quantized model (onnxruntime's `quantize_dynamic`, optimum's, `sluiceway optimize
--int8 dynamic`) quantizes each MatMul's activations at run time: one scale and zero point for the
whole tensor, batch included. Batched, one row of large values widens every other row's
quantization step: in a batch of 64 rows of the demo MLP quantized so, one row 10x the others cost
another row an error of 1.01 on outputs of magnitude 1.68, answered OK. Any client could degrade
the answers of the clients batched with it.

Rewritten here, over each row of the quantized input (its last axis), the arithmetic unchanged
(row_quantization_nodes.py):
- a DynamicQuantizeLinear whose outputs feed only MatMulInteger (as quantize_dynamic writes it) or
  onnxruntime's MatMulIntegerToFloat (its graph optimization's fusion of one shared by several
  MatMuls), and Mul (its scale);
- onnxruntime's DynamicQuantizeMatMul (its fusion of one MatMul's: what `sluiceway optimize` saves).
B must be a constant matrix (the weights), its zero point a constant. A request of one 2-D row gets
exactly what the model gives that row alone; every row of a batch gets what it gets alone. A
request of several rows has its rows quantized each on its own, not together.

Left as they are, named in one WARNING: a DynamicQuantizeLinear with any other consumer (ConvInteger,
a graph output), others of onnxruntime's fused ops (DynamicQuantizeLSTM, QAttention), and anything
inside subgraphs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from server.backends.graph_names import ONNX_DOMAIN, default_opset, free_prefix
from server.backends.int_division_scan import may_hold
from server.backends.row_quantization_nodes import RowNodes

log = logging.getLogger(__name__)

PREFIX = "sluiceway_rowq"
KEPT_FUSED = ("DynamicQuantizeLSTM", "QAttention")
_MARKS = (b"DynamicQuantize", b"QAttention")
# The standard opset imported for the rewrite when a model imports none.
ADDED_OPSET = 13
_MICROSOFT = "com.microsoft"
Users = dict[str, list[tuple[int, int]]]  # tensor -> (node index, input slot) of each node reading it


@dataclass
class RowQuantization:
    """What the rewrite did: the nodes made per row, and those kept per batch with why."""

    per_row: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def row_quantized(path: Path, model: str) -> onnx.ModelProto | None:
    """The model at `path` with its dynamic quantization made per row, or None when it has none to
    make so (or onnx cannot read it: the session's own load then says why). Logs what it did."""
    if not may_hold(path, _MARKS):  # the look at its bytes: ~1 ms, where the parse took ~90 ms for resnet
        return None
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # not readable by onnx: the session's load decides
        return None
    try:
        done = make_per_row(proto)
    except Exception as err:  # a graph this does not understand: served as written, said once
        log.warning("model %s: dynamic quantization left per batch: its rewrite failed (%s)", model, err)
        return None
    if done.per_row:
        log.info(
            "model %s: dynamic quantization made per row in %d node(s) (a batched request's answer "
            "does not depend on its batch mates)",
            model,
            len(done.per_row),
        )
    if done.kept:
        log.warning(
            "model %s: dynamic quantization left per batch in %s: a batched request's answer may "
            "depend on the requests batched with it",
            model,
            "; ".join(done.kept),
        )
    return proto if done.per_row else None


def make_per_row(model: onnx.ModelProto) -> RowQuantization:
    """Rewrite `model`'s top-level graph in place (see the module's docstring)."""
    graph = model.graph
    done = RowQuantization()
    done.kept.extend(f"{_named(n)} (fused; not rewritten)" for n in graph.node if n.op_type in KEPT_FUSED)
    done.kept.extend(_inside_subgraphs(graph))
    opset = default_opset(model)
    if opset is None:  # custom-domain ops alone: the rewrite's ops need the standard domain, and
        # onnxruntime reads a missing import as its newest opset (ReduceMin's `axes` then an input)
        opset = ADDED_OPSET
        model.opset_import.append(onnx.helper.make_opsetid("", opset))
    weights = {init.name: init for init in graph.initializer}
    old = list(graph.node)
    users: Users = {}
    for index, node in enumerate(old):
        for slot, name in enumerate(node.input):
            users.setdefault(name, []).append((index, slot))
    outputs = {v.name for v in graph.output}
    prefix = free_prefix(graph, PREFIX)
    replaced: dict[int, list[onnx.NodeProto]] = {}  # a matmul's index -> the nodes that replace it
    nodes: list[onnx.NodeProto] = []
    for index, node in enumerate(old):
        if index in replaced:
            nodes.extend(replaced.pop(index))
            continue
        quantizes = node.op_type == "DynamicQuantizeLinear" and node.domain in ONNX_DOMAIN
        fused = node.op_type == "DynamicQuantizeMatMul" and node.domain == _MICROSOFT
        if not (quantizes or fused):
            nodes.append(node)
            continue
        rows = RowNodes(graph, opset, f"{prefix}{len(done.per_row)}/")
        if quantizes:
            why = _dql_blocker(node, old, users, weights, outputs)
            if why is None:
                q, scale, _ = node.output
                zp32 = rows.quantize_rows(node.input[0], q, scale)
                for user, _slot in users.get(q, []):
                    replaced[user] = _matmul(rows, old[user], q, scale, zp32, weights)
        else:
            why = _weights_blocker(node, 1, 3, weights)
            if why is None:
                q, scale = rows.name("q"), rows.name("scale")
                zp32 = rows.quantize_rows(node.input[0], q, scale)
                b_zero = _optional(node, 3, weights)
                bias = node.input[4] if len(node.input) > 4 else ""
                b = weights[node.input[1]]
                rows.float_matmul(q, scale, zp32, b, node.input[2], b_zero, bias, node.output[0])
        if why is not None:
            done.kept.append(f"{_named(node)} ({why})")
            nodes.append(node)
            continue
        nodes.extend(rows.nodes)
        done.per_row.append(_named(node))
    if done.per_row:
        del graph.node[:]
        graph.node.extend(nodes)
        # Saved shapes of intermediate tensors go: a scale of one value is now one a row (and so is
        # every product with it). onnx's strict inference refuses the stale shapes (onnxruntime
        # 1.31 loads them); onnxruntime infers them again.
        del graph.value_info[:]
    return done


def _matmul(
    rows: RowNodes,
    node: onnx.NodeProto,
    q: str,
    scale: str,
    zp32: str,
    weights: dict[str, onnx.TensorProto],
) -> list[onnx.NodeProto]:
    """The nodes that replace `node` (MatMulInteger or MatMulIntegerToFloat reading q), its output kept."""
    start = len(rows.nodes)
    b = weights[node.input[1]]
    if node.op_type == "MatMulInteger":
        rows.int_matmul(q, b, _optional(node, 3, weights), zp32, node.output[0])
    else:
        bias = node.input[6] if len(node.input) > 6 else ""
        rows.float_matmul(q, scale, zp32, b, node.input[3], _optional(node, 5, weights), bias, node.output[0])
    made = rows.nodes[start:]
    del rows.nodes[start:]
    return made


def _optional(
    node: onnx.NodeProto, slot: int, weights: dict[str, onnx.TensorProto]
) -> onnx.TensorProto | None:
    return weights[node.input[slot]] if len(node.input) > slot and node.input[slot] else None


_DYNAMIC_OPS = frozenset({"DynamicQuantizeLinear", "DynamicQuantizeMatMul", *KEPT_FUSED})


def _inside_subgraphs(graph: onnx.GraphProto) -> list[str]:
    """Dynamic quantization inside If/Loop/Scan bodies: not rewritten, named."""
    found: list[str] = []
    for node in graph.node:
        for attr in node.attribute:
            bodies = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for body in bodies:
                found.extend(
                    f"{_named(inner)} (inside {_named(node)}; not rewritten)"
                    for inner in body.node
                    if inner.op_type in _DYNAMIC_OPS
                )
                found.extend(_inside_subgraphs(body))
    return found


def _named(node: onnx.NodeProto) -> str:
    return f"{node.op_type} node '{node.name or node.output[0]}'"


def _weights_blocker(
    node: onnx.NodeProto, b: int, b_zero: int, weights: dict[str, onnx.TensorProto]
) -> str | None:
    if node.input[b] not in weights or len(weights[node.input[b]].dims) != 2:
        return f"{_named(node)}'s weights are not a constant matrix"
    if len(node.input) > b_zero and node.input[b_zero] and node.input[b_zero] not in weights:
        return f"{_named(node)}'s weights' zero point is not a constant"
    named = [
        node.input[b],
        *([node.input[b_zero]] if len(node.input) > b_zero and node.input[b_zero] else []),
    ]
    if any(weights[name].data_location == onnx.TensorProto.EXTERNAL for name in named):
        return f"{_named(node)}'s weights are in an external data file (their column sums are not read)"
    return None


# Where each consumer of a DynamicQuantizeLinear's outputs may read them: (op, slot of q, of the
# scale, of the zero point); a Mul may read the scale in either slot.
_READERS = {"MatMulInteger": (0, None, 2), "MatMulIntegerToFloat": (0, 2, 4)}


def _dql_blocker(
    node: onnx.NodeProto,
    old: list[onnx.NodeProto],
    users: Users,
    weights: dict[str, onnx.TensorProto],
    outputs: set[str],
) -> str | None:
    """Why `node`'s outputs cannot be made per row (None: they can)."""
    if outputs & set(node.output):
        return "an output of the graph"
    readers: set[int] = set()
    for slot_of, name in enumerate(node.output):
        for index, slot in users.get(name, []):
            user = old[index]
            if slot_of == 1 and user.op_type == "Mul" and user.domain in ONNX_DOMAIN:
                continue
            kind = _READERS.get(user.op_type) if user.domain in (*ONNX_DOMAIN, _MICROSOFT) else None
            if kind is None or kind[slot_of] != slot:
                return f"feeds {_named(user)}"
            readers.add(index)
    for index in readers:
        user = old[index]
        kind = _READERS[user.op_type]
        if any(
            len(user.input) <= s or user.input[s] != node.output[i]
            for i, s in enumerate(kind)
            if s is not None
        ):
            return f"{_named(user)} does not read all of it"
        b_zero = 3 if user.op_type == "MatMulInteger" else 5
        if (why := _weights_blocker(user, 1, b_zero, weights)) is not None:
            return why
    return None
