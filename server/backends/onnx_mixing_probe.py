"""The copy of a graph that the reading of ops that mix rows (onnx_row_mixing.py) runs onnx's shape
inference on: overridable initializers no client sends shaped as their initializers, model-local
functions inlined, and the inputs of Loop and Scan bodies given the shapes of the values their node
feeds them (onnx's inference reads a body with the inputs it declares: a Loop whose body declared
no shape for its carried value had not been read; a tester, session 50).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping

import onnx

from server.backends.function_inlining import inlined
from server.backends.graph_names import ONNX_DOMAIN, graphs, subgraphs
from server.backends.node_order import ordered, reads, sort_nodes
from server.backends.onnx_constant_branches import inline_constant_branches
from server.backends.onnx_dim_classes import named_alike
from server.backends.onnx_fixed_lengths import inferred_afresh, with_fixed_lengths
from server.backends.onnx_mixing_ops import scan_inputs
from server.backends.onnx_output_shapes import inference_probe, inferred_shapes
from server.backends.onnx_runtime_rewrites import as_onnxruntime_runs
from server.backends.onnx_seeded_shapes import seed_unshaped
from server.backends.onnx_stand_ins import StandIns, stood_in
from server.backends.onnx_told_dims import told_unnamed

SEEDING_ROUNDS = 3  # Loop/Scan bodies within bodies: each round of inference reaches one level more


def inferred_probe(probe: onnx.ModelProto) -> onnx.ModelProto:
    """`probe` as onnx's shape inference makes it: model-local functions inlined first (their ops
    are standard ones), then Loop and Scan bodies given their inputs' shapes and inferred again,
    and dims proved alike named alike (onnx_dim_classes.py)."""
    if probe.functions:
        probe = inlined(probe)
    _constants_in_bodies(probe)
    inferred = inferred_shapes(probe)
    if as_onnxruntime_runs(inferred):  # the shapes onnxruntime's own rewrites leave unchecked
        inferred = inferred_afresh(inferred, inferred_shapes)
    inferred = with_fixed_lengths(inferred, inferred_shapes)  # (Swin's window arithmetic)
    for _ in range(SEEDING_ROUNDS):  # an If a rank test decides: its branch (s65), and Ifs within it
        if not inline_constant_branches(inferred):
            break
        inferred = inferred_shapes(inferred)
    if seed_unshaped(inferred):  # values onnx left without a shape, worked out node by node
        inferred = inferred_shapes(inferred)
    if any(node.op_type in ("Loop", "Scan") for g in graphs(inferred.graph) for node in g.node):
        for _ in range(SEEDING_ROUNDS):
            if not _seed_bodies(inferred.graph, {}):
                break
            inferred = inferred_shapes(inferred)
    named_alike(inferred, probe)
    return inferred


def _constants_in_bodies(probe: onnx.ModelProto) -> None:
    """Each small initializer an If, Loop or Scan body reads from the main graph written in the
    body as a Constant of its name: onnx's inference propagates a body's values only from what the
    body holds, so a view by sizes read with the main graph's constants had no shape there, and a
    Softmax over the batch after it loaded batched (a tester, session 52). Initializers a client
    may send (listed as inputs) are not constants."""
    sent = {value.name for value in probe.graph.input}
    small = {init.name: init for init in probe.graph.initializer if init.name not in sent}
    bodies = [sub for graph in graphs(probe.graph) for node in graph.node for sub in subgraphs(node)]
    for graph in bodies:
        made = {out for node in graph.node for out in node.output} | {i.name for i in graph.input}
        read = sorted({name for node in graph.node for name in node.input} & small.keys() - made)
        if read:
            nodes = [onnx.helper.make_node("Constant", [], [name], value=small[name]) for name in read]
            nodes += list(graph.node)
            graph.ClearField("node")
            graph.node.extend(nodes)


def _types(graph: onnx.GraphProto, outer: Mapping[str, onnx.TypeProto]) -> dict[str, onnx.TypeProto]:
    types = dict(outer)
    for value in (*graph.input, *graph.value_info, *graph.output):
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            types[value.name] = value.type
    return types


def _seed_bodies(graph: onnx.GraphProto, outer: Mapping[str, onnx.TypeProto]) -> bool:
    """Give each Loop's and Scan's body inputs the type of the value the node feeds them (a Scan's
    slices without the scan axis) where they declare less: onnx's inference reads a body with the
    inputs it declares. Whether any was given."""
    types = _types(graph, outer)
    changed = False
    for node in graph.node:
        for sub in subgraphs(node):
            for inner, fed in _feeds(node, sub, types):
                changed = (fed is not None and _seeded(inner, fed)) or changed
            changed = _seed_bodies(sub, types) or changed
        changed = _kept_through(graph, node, types) or changed
    return changed


def _kept_through(graph: onnx.GraphProto, node: onnx.NodeProto, types: Mapping[str, onnx.TypeProto]) -> bool:
    """Each carried value of a Loop that onnx left without a shape given the shape it is fed, where
    the body takes it with that shape and returns it with that shape, every dim named or sized: each
    turn keeps it, and a Loop of no turns returns it as fed (onnx had left Loop(x)'s output of no
    rank, so Reshape(lo, Shape(lo)) and ones_like(lo) were refused; session 65). Whether any was."""
    if node.op_type != "Loop" or node.domain not in ONNX_DOMAIN or not node.attribute:
        return False
    body = next((found.g for found in node.attribute if found.name == "body"), None)
    if body is None:
        return False
    own = _types(body, {})
    changed = False
    for fed, inner, out, made in zip(
        node.input[2:], body.input[2:], body.output[1:], node.output, strict=False
    ):
        given = types.get(fed)
        if not made or made in types or given is None or not _every_dim_told(given):
            continue
        if own.get(inner.name) != given or own.get(out.name) != given:
            continue
        info = next((value for value in graph.value_info if value.name == made), None)
        if info is None:
            info = graph.value_info.add()
            info.name = made
        info.type.CopyFrom(given)
        changed = True
    return changed


def _every_dim_told(found: onnx.TypeProto) -> bool:
    return found.HasField("tensor_type") and all(
        dim.HasField("dim_value") or bool(dim.dim_param) for dim in found.tensor_type.shape.dim
    )


def _seeded(inner: onnx.ValueInfoProto, fed: onnx.TypeProto) -> bool:
    """`inner` given `fed`'s type where it declares no shape, or `fed`'s dims where it declares
    neither a size nor the same symbol (an exporter's own name for a dim). Whether it changed."""
    tensor = inner.type.tensor_type
    if not inner.type.HasField("tensor_type") or not tensor.HasField("shape"):
        inner.type.CopyFrom(fed)
        return True
    found = fed.tensor_type.shape.dim
    if len(tensor.shape.dim) != len(found):
        return False
    changed = False
    for dim, seen in zip(tensor.shape.dim, found, strict=True):
        if dim.HasField("dim_value") or dim == seen or not (seen.HasField("dim_value") or seen.dim_param):
            continue
        dim.CopyFrom(seen)
        changed = True
    return changed


def _feeds(
    node: onnx.NodeProto, body: onnx.GraphProto, types: Mapping[str, onnx.TypeProto]
) -> Iterator[tuple[onnx.ValueInfoProto, onnx.TypeProto | None]]:
    """Each input of `body` with the type the node feeds it, where known."""
    if node.op_type == "Loop":  # (trip count, condition, carried...) -> (turn, condition, carried...)
        for inner, name in zip(body.input[2:], node.input[2:], strict=False):
            yield inner, types.get(name)
    elif node.op_type == "Scan" and node.domain in ONNX_DOMAIN:
        states, axes = scan_inputs(node)
        for i, (inner, name) in enumerate(zip(body.input, node.input, strict=False)):
            fed = types.get(name)
            yield inner, fed if i < states or fed is None else _without_axis(fed, axes[i - states])


def _without_axis(fed: onnx.TypeProto, axis: int) -> onnx.TypeProto | None:
    dims = fed.tensor_type.shape.dim
    if not -len(dims) <= axis < len(dims):
        return None
    sliced = onnx.TypeProto()
    sliced.CopyFrom(fed)
    del sliced.tensor_type.shape.dim[axis % len(dims)]
    return sliced


def as_initialized(probe: onnx.ModelProto, model: onnx.ModelProto, fed: Collection[str]) -> onnx.ModelProto:
    """`probe` with each overridable initializer no client sends declared as its initializer is:
    declared [N, 1] beside x [N, 3], a constant [[2]] had read as one value a row."""
    sent = {value.name for value in model.graph.input} - set(fed)
    shapes = {init.name: init.dims for init in model.graph.initializer if init.name in sent}
    for value in probe.graph.input:
        if value.name in shapes and value.type.HasField("tensor_type"):
            value.type.tensor_type.shape.Clear()
            for size in shapes[value.name]:
                value.type.tensor_type.shape.dim.add().dim_value = size
    return probe


def own_names(probe: onnx.ModelProto) -> onnx.ModelProto:
    """`probe` with the dims its exporter named by an expression ('4*batch') left unnamed, but for
    the inputs': torch's dynamo gives a fold of (batch, heads) and one of (steps, batch) the same
    name, and a name is taken for one size (a tester, session 51: nn.MultiheadAttention with as many
    steps as heads was read as moving rows). onnx's inference names each anew."""
    for value in (*probe.graph.value_info, *probe.graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and not dim.dim_param.isidentifier():
                dim.Clear()
    return probe


def named_apart(probe: onnx.ModelProto, server_fed: Collection[str]) -> onnx.ModelProto:
    """`probe` with the dims of the inputs the server feeds (a sequence's state, control inputs,
    batch_input targets) named apart from the inputs clients send, but for the batch's own names:
    their sizes are never checked against a request's (server/models/dim_ties.py), so a name they
    share proves nothing. A state of the last request's 3 steps, named 'T' like this request's 5,
    had let a pick bounded by the request's steps read the next sequence's state, OK (a tester,
    session 53)."""
    if not server_fed:
        return probe
    initializers = {init.name for init in probe.graph.initializer}
    sent = [v for v in probe.graph.input if v.name not in server_fed and v.name not in initializers]
    batch = {v.type.tensor_type.shape.dim[0].dim_param for v in sent if v.type.tensor_type.shape.dim}
    for value in (v for v in probe.graph.input if v.name in server_fed):
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param not in batch:
                dim.dim_param = f"{dim.dim_param}@{value.name}"
    return probe


def reading_probe(
    model: onnx.ModelProto, fed: Collection[str], server_fed: Collection[str]
) -> tuple[onnx.ModelProto, StandIns]:
    """The copy of `model` the row-mixing reading walks, shapes inferred, with standard ops standing
    in for those of other domains (onnx_stand_ins.py), and what those stand-ins do not read: `fed`,
    the overridable initializers clients may send; `server_fed`, the inputs the server feeds itself."""
    outputs = {out.name for out in model.graph.output}
    copied = inference_probe(model, outputs)
    sort_nodes(copied.graph)  # each node after the nodes making its inputs (node_order.py)
    probe = own_names(named_apart(as_initialized(copied, model, fed), server_fed))
    probe = told_unnamed(probe, server_fed)  # a request's own lengths named (onnx_told_dims.py)
    probe, stand_ins = stood_in(probe)
    return declared_where_unknown(stored_where_unknown(inferred_probe(probe), model), model), stand_ins


def stored_where_unknown(inferred: onnx.ModelProto, model: onnx.ModelProto) -> onnx.ModelProto:
    """A dim name `model` stores in its value infos, given back where the inference, those names set
    aside (onnx_output_shapes._without_initializers), left the dim unknown, or the tensor without a
    shape: a Loop carrying x, its output stored [B, 4], is not inferred again; its name cleared, its
    first axis read as unknown and a Softmax along it loaded batched, wrong, OK (a tester, session 61).
    A stored shape of sizes alone is given back only to a tensor made from no input: a Loop's output
    made from x stored [1, 3] by a batch-1 export is [N, 3] at run time (x / Size(it), Softmax(it,
    axis=0) loaded batched; testers, session 62), and read as [?, ?] its unknown first axis was taken
    as not the batch's: such a tensor is left of no known shape. A Loop-built table's [4, 3] is its
    size; a Loop's output made from x stored ['N', 8] keeps its 8."""
    stored = {v.name: v for v in model.graph.value_info if v.type.HasField("tensor_type")}
    from_inputs = made_from_inputs(model.graph)

    def trusted(name: str) -> bool:  # its sizes are its run's: made from no input, or a name said
        dims = stored[name].type.tensor_type.shape.dim
        return name not in from_inputs or any(dim.dim_param for dim in dims)

    seen: set[str] = set()
    for value in inferred.graph.value_info:
        seen.add(value.name)
        said = stored.get(value.name)
        tensor = value.type.tensor_type if value.type.HasField("tensor_type") else None
        if said is None or tensor is None or not trusted(value.name):
            continue
        if not tensor.HasField("shape") and _whole(said):
            tensor.shape.CopyFrom(said.type.tensor_type.shape)  # a type inferred, no shape (a Loop's)
            continue
        dims = tensor.shape.dim
        if len(dims) != len(said.type.tensor_type.shape.dim):
            continue
        for dim, old in zip(dims, said.type.tensor_type.shape.dim, strict=True):
            unknown = not dim.HasField("dim_value") and not dim.dim_param
            if unknown and (old.dim_param or old.HasField("dim_value")):
                dim.CopyFrom(old)  # (a stored size too: set aside with its tensor's names)
    named = seen | {v.name for v in (*inferred.graph.input, *inferred.graph.output)}
    for name, value in stored.items():
        if name not in named and _whole(value) and trusted(name):  # (a dim of no name: as unknown)
            inferred.graph.value_info.append(value)
    return inferred


def made_from_inputs(graph: onnx.GraphProto) -> set[str]:
    """The main graph's tensors made from its inputs (initializers aside), through any node; a
    body's every read (of its own tensors too: more, never fewer) counted as its node's."""
    initializers = {init.name for init in graph.initializer}
    made = {value.name for value in graph.input if value.name not in initializers}
    for node in ordered(graph):
        if not made.isdisjoint(reads(node)):
            made.update(name for name in node.output if name)
    return made


def _whole(value: onnx.ValueInfoProto) -> bool:
    """Whether a stored tensor's shape is stored, each dim a size or a name."""
    tensor = value.type.tensor_type
    return tensor.HasField("shape") and all(d.HasField("dim_value") or d.dim_param for d in tensor.shape.dim)


def declared_where_unknown(inferred: onnx.ModelProto, model: onnx.ModelProto) -> onnx.ModelProto:
    """`inferred`'s outputs, inferred without their declarations, given a declared dim only where
    the inference left it unknown (None or its own `unk__` names) and the ranks agree: a declaration
    bounds what onnx infers, and y = Transpose(x) declared ['N', 'K'] had been read as the batch's
    rows; each request got a value of every batch mate's, OK (a tester, session 58)."""
    declared = {out.name: out.type.tensor_type.shape.dim for out in model.graph.output}
    for out in inferred.graph.output:
        given = declared.get(out.name)
        tensor = out.type.tensor_type
        if given is None or not out.type.HasField("tensor_type") or not tensor.HasField("shape"):
            continue
        if len(tensor.shape.dim) != len(given):
            continue
        for dim, said in zip(tensor.shape.dim, given, strict=True):
            unknown = not dim.HasField("dim_value") and (
                not dim.dim_param or dim.dim_param.startswith("unk__")
            )
            if unknown and (said.HasField("dim_value") or said.dim_param):
                dim.CopyFrom(said)
    return inferred


def declared_batch_unmade(
    declared: onnx.ValueInfoProto, dims: list[int | str | None] | None, batch: Collection[str]
) -> str | None:
    """Why an output declared with the batch's symbol first is not the batch's rows: the graph
    makes its first axis a fixed size, or another dim (declared_where_unknown's dims)."""
    said = declared.type.tensor_type.shape.dim if declared.type.HasField("tensor_type") else []
    if not said or said[0].dim_param not in batch or not dims or dims[0] in batch:
        return None
    if not isinstance(dims[0], int) and not any(dim in batch for dim in dims[1:]):
        return None  # a name the inference gave it: not shown to be another axis
    shown = [d.dim_value if d.HasField("dim_value") else d.dim_param or None for d in said]
    return (
        f"it is declared {shown}, its first axis the batch's, but the graph makes it {dims}: a request's "
        "share of it is not its rows"
    )
