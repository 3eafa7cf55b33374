"""A graph's outputs as onnxruntime describes them, where the graph's own declaration says too little.

An exporter may declare an output's shape loosely: `[?]` for column sums (x [N, 3] -> y [3]), a
symbol of its own (`unk__2`, tf2onnx's) for a dim that is in fact fixed, or no shape at all.
onnxruntime infers the shape (y [3]), and Triton's onnxruntime backend completes a config from what
onnxruntime reports. Read as declared, such an output's first dim looked like the batch: column
sums were batched, and three coalesced one-row requests each got the batch's sums, OK; an output
with no shape was taken for a scalar, and every request failed INTERNAL.

`refined_outputs` runs onnx's shape inference when some output's first dim is not shown to be an
input's (unknown, a symbol no input's first dim has, or no shape), and merges what it finds into
those outputs: an inferred fixed size wins over a declared symbol or unknown (onnxruntime reports
the fixed one), an inferred symbol fills an unknown; a declared fixed size stays.
"""

from __future__ import annotations

import math

import onnx
import onnx.version_converter

from server.backends.graph_names import ONNX_DOMAIN, graphs
from server.backends.onnx_stand_ins import stood_in

# Names an input's unnamed first dim for the inference, so that what carries it can say so.
BATCH_SYMBOL = "__sluiceway_batch_{}"
# Initializers of at most this many elements keep their values in the inference's copy: shapes,
# axes, pads, scales. A bound of 4,096 had kept a model's 12,000 weights of 64 x 64 (1.7-3 s a read).
SMALL_INITIALIZER = 64


def refined_outputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph's outputs, those whose first dim is unsure refined by onnx's shape inference."""
    declared = list(model.graph.output)
    firsts = input_first_dims(model)
    unsure = {out.name for out in declared if _unsure(out, firsts)}
    if not unsure:
        return declared
    inferred = _inferred(model, unsure)
    return [_merged(out, inferred.get(out.name)) if out.name in unsure else out for out in declared]


def input_first_dims(model: onnx.ModelProto) -> set[str]:
    """The symbols of the graph inputs' first dims (initializers are not inputs here)."""
    initializers = {init.name for init in model.graph.initializer}
    firsts: set[str] = set()
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name not in initializers and dims and dims[0].dim_param:
            firsts.add(dims[0].dim_param)
    return firsts


def _unsure(value: onnx.ValueInfoProto, firsts: set[str]) -> bool:
    """Whether `value`'s declaration leaves its first dim unknown, or names it with a symbol no
    input's first dim has. A declared scalar (a shape of no dims) or fixed first dim is sure."""
    if value.type.WhichOneof("value") is None:
        return True  # no type at all: onnxruntime infers one
    if value.type.WhichOneof("value") != "tensor_type":
        return False  # sequences, maps, optionals: refused by completion whatever their shape
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return True
    if not tensor.shape.dim:
        return False
    first = tensor.shape.dim[0]
    return not first.HasField("dim_value") and first.dim_param not in firsts


def inference_probe(model: onnx.ModelProto, cleared: set[str]) -> onnx.ModelProto:
    """A copy of `model` for onnx's shape inference: each input's unnamed first dim named
    (BATCH_SYMBOL, so that what carries it says so), the declared shapes of the outputs in
    `cleared` set aside (a declaration would bound what is inferred). An initializer of more than
    SMALL_INITIALIZER elements (a weight), or stored as external data, is given as a graph input
    of its type, without its values: the inference reads the values of small ones only (a
    Reshape's shape), and the demo resnet's 47 MB of weights copied into the inference had taken
    most of its 0.2 s."""
    probe = _without_initializers(model)
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    for i, value in enumerate(probe.graph.input):
        dims = value.type.tensor_type.shape.dim
        unnamed = dims and not dims[0].HasField("dim_value") and not dims[0].dim_param
        if value.name not in initializers and unnamed:
            dims[0].dim_param = BATCH_SYMBOL.format(i)
    listed = {value.name for value in graph.input}
    for init in graph.initializer:
        if math.prod(init.dims) <= SMALL_INITIALIZER and init.data_location != onnx.TensorProto.EXTERNAL:
            probe.graph.initializer.append(init)
        elif init.name not in listed:
            probe.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, init.dims))
    for out in probe.graph.output:
        if out.name in cleared and out.type.HasField("tensor_type"):
            out.type.tensor_type.ClearField("shape")
    return probe


def _without_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """What shape inference reads of `model`, its initializers left out (not copied at all), and
    its stored value infos' dim names other than its inputs' cleared: a model saved after shape
    inference (onnxsim's, an unnamed batch) holds its batch as `unk__0` on every tensor inside,
    which onnx's inference keeps, so a residual x + Conv(x) read the batch against another length
    and Softmax(x @ W, axis=0) was not read along the batch (a tester, session 61); so too in an
    If's, a Loop's or a Scan's body, a sequence's elements, and an If branch's declared outputs
    (`[t_dim0, 8]` and `[e_dim0, 8]` merged as a new name: a second tester, session 61). Value
    infos are left out whole, sizes too, the main graph's (onnx_mixing_probe.stored_where_unknown
    gives them back where the inference cannot) and the bodies': a batch-1 export made dynamic by
    onnx's update_model_dims keeps its tensors' stored 1, which read the batch's axis as a fixed 1
    (a fifth tester, session 61; in an If's or a Loop's body, a tester, session 62)."""
    probe = onnx.ModelProto(ir_version=model.ir_version)
    probe.opset_import.extend(model.opset_import)
    probe.functions.extend(model.functions)  # model-local functions the nodes may call
    probe.graph.name = model.graph.name
    for part in ("node", "input", "output", "sparse_initializer"):  # (its value infos left out)
        getattr(probe.graph, part).extend(getattr(model.graph, part))
    declared = {d.dim_param for v in model.graph.input for d in v.type.tensor_type.shape.dim if d.dim_param}
    bodies = graphs(probe.graph)
    next(bodies)  # (the main graph: bodies are copies in the probe's nodes, the model's untouched)
    for body in bodies:
        for value in (*body.value_info, *body.input, *body.output):  # an If's outputs `[t_dim0, 8]`
            _names_set_aside(value.type, declared)
        del body.value_info[:]  # a stored size may be stale too: a batch-1 export's 1 (a tester, s62)
    return probe


def _names_set_aside(kind: onnx.TypeProto, kept: set[str]) -> None:
    """`kind`'s dim names but `kept` cleared, in a sequence's or an optional's element too; its
    sizes kept."""
    if kind.HasField("sequence_type"):
        _names_set_aside(kind.sequence_type.elem_type, kept)
    elif kind.HasField("optional_type"):
        _names_set_aside(kind.optional_type.elem_type, kept)
    elif kind.HasField("tensor_type"):
        for dim in kind.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param not in kept:
                dim.ClearField("dim_param")


def inferred_shapes(probe: onnx.ModelProto) -> onnx.ModelProto:
    """onnx's shape inference of `probe` (data propagated), a graph of opset 13 with a Reshape read
    as opset 14 (_read_as_14) and given its own opset back: the readings ask it what an op means."""
    _plain_domain(probe)
    at = _standard(probe)
    as_14 = _read_as_14(probe, at)
    try:
        inferred = onnx.shape_inference.infer_shapes(probe, data_prop=True)
    finally:
        if as_14:
            probe.opset_import[at].version = 13
    if as_14:
        inferred.opset_import[_standard(inferred)].version = 13
    if at >= 0 and probe.opset_import[at].version < 13 and _views(probe):
        _fill_from_converted(inferred, probe)
    return inferred


def _views(probe: onnx.ModelProto) -> bool:
    return any(node.op_type == "Reshape" for graph in graphs(probe.graph) for node in graph.node)


def _fill_from_converted(inferred: onnx.ModelProto, probe: onnx.ModelProto) -> None:
    """The shapes onnx's inference gave no tensor of a graph below opset 13, taken from the same
    graph converted to opset 14 by onnx's version converter (its tensors keep their names): at 11 and
    12 a view by sizes read from the input left everything after it without a shape, and a Softmax
    over the batch there loaded batched (a tester, session 52). The graph read is the model's own."""
    try:
        converted = onnx.shape_inference.infer_shapes(
            onnx.version_converter.convert_version(probe, 14), data_prop=True
        )
    except Exception:  # a graph the converter cannot take: what the inference gave stands
        return
    found = {value.name: value for value in (*converted.graph.value_info, *converted.graph.output)}
    shaped = {
        v.name
        for v in (*inferred.graph.value_info, *inferred.graph.input)
        if v.type.tensor_type.HasField("shape")
    }
    kept = {value.name: value for value in inferred.graph.value_info}
    for node in inferred.graph.node:
        for name in node.output:
            given = found.get(name)
            if name in shaped or given is None or not given.type.tensor_type.HasField("shape"):
                continue
            if name in kept:
                kept[name].type.CopyFrom(given.type)
            else:
                inferred.graph.value_info.append(given)


def _plain_domain(probe: onnx.ModelProto) -> None:
    """ONNX's domain spelt 'ai.onnx' written '' in `probe`: onnx's inference read no shape of such a
    graph, or refused it (a Softmax over the batch had loaded batched; a tester, session 52)."""
    plain = any(opset.domain == "" for opset in probe.opset_import)
    for opset in probe.opset_import:
        if opset.domain == "ai.onnx" and not plain:
            opset.domain, plain = "", True
    if plain:
        for graph in graphs(probe.graph):
            for node in graph.node:
                if node.domain == "ai.onnx":
                    node.domain = ""


def _standard(model: onnx.ModelProto) -> int:
    """The index of ONNX's own opset among the model's (-1: none)."""
    return next((i for i, o in enumerate(model.opset_import) if o.domain in ONNX_DOMAIN), -1)


def _read_as_14(probe: onnx.ModelProto, at: int) -> bool:
    """A graph at opset 13 with a Reshape set to opset 14 for onnx's inference; whether it was.
    onnx's Reshape-13 inference reads only a constant shape: after torch's q.view(bs, L, H, D) it
    gave no shape to anything, and nothing after it was read (a Softmax over the batch there
    loaded batched and answered wrong, OK; GPT-2's sequence-classification pooling was refused;
    session 52). Reshape-14 reads the shape values data propagation gives, and means the same
    (its allowzero 0). At 14 the other ops change types or add attributes whose defaults are 13's,
    but for BatchNormalization, whose outputs 13's training export has more of than 14 allows: a
    graph with such a node stays."""
    if at < 0 or probe.opset_import[at].version != 13:
        return False
    nodes = [node for g in graphs(probe.graph) for node in g.node if node.domain in ONNX_DOMAIN]
    if not any(node.op_type == "Reshape" for node in nodes):
        return False
    if any(node.op_type == "BatchNormalization" and len(node.output) > 1 for node in nodes):
        return False
    probe.opset_import[at].version = 14
    return True


def _inferred(model: onnx.ModelProto, unsure: set[str]) -> dict[str, onnx.ValueInfoProto]:
    """The unsure outputs as onnx's shape inference makes them; none where it fails."""
    try:
        probe, _ = stood_in(inference_probe(model, unsure))  # ops of other domains read (onnx_stand_ins.py)
        inferred = inferred_shapes(probe)
    except Exception:  # onnx refuses some graphs onnxruntime runs: the declaration stands
        return {}
    # An output whose declaration has no type at all can get its inferred shape in value_info only
    # (a Reshape by a Shape, data propagated): taken from there where the output has none.
    found = {value.name: value for value in inferred.graph.value_info if value.name in unsure}
    for out in inferred.graph.output:
        if out.name in unsure and (out.type.tensor_type.HasField("shape") or out.name not in found):
            found[out.name] = out
    return found


def _merged(declared: onnx.ValueInfoProto, inferred: onnx.ValueInfoProto | None) -> onnx.ValueInfoProto:
    if inferred is None or not inferred.type.tensor_type.HasField("shape"):
        return declared
    merged = onnx.ValueInfoProto()
    merged.CopyFrom(declared)
    tensor = merged.type.tensor_type
    if not tensor.elem_type:
        tensor.elem_type = inferred.type.tensor_type.elem_type
    found = inferred.type.tensor_type.shape.dim
    if not tensor.HasField("shape") or len(tensor.shape.dim) != len(found):
        tensor.shape.CopyFrom(inferred.type.tensor_type.shape)
        return merged
    for dim, seen in zip(tensor.shape.dim, found, strict=True):
        if dim.HasField("dim_value"):
            continue  # declared fixed: stays
        if seen.HasField("dim_value"):
            dim.dim_value = seen.dim_value  # onnxruntime reports the fixed size
        elif not dim.dim_param and seen.dim_param:
            dim.dim_param = seen.dim_param
    return merged
