"""Lengths the load can tell are not the batch's, for onnx_value_lineage.py: a length of a main-graph
input's axis other than the batch's, and a dim an op makes from such lengths and from amounts made
from no batched input.

A table as long as such a length, broadcast against the batch's axis, gives each request of a
batch another row of it than alone (a tester, session 59: a Loop stacking its turn number, or
Range(0, L)[:, None], then (x + t)[:N]). The lineage had counted the length as made from no batched
input only where it read as a number or a name an input declares, so it loaded batched, wrong, OK,
where L was Shape(x)[1] of x declared [N, ?] (no name: here each input's unnamed dim past the first
is named, TOLD_SYMBOL, before the inference, which carries the name on), Size(x[0]) (a Size of dims
each a number or such a name), Shape(x[:, :T - 1])[1] or Shape(TopK(x, T).values)[1] (the name onnx
made up, `unk__`, for a dim worked out from x's dim 4 or T and amounts of no batched input).
The same table by a length read off a Concat along another axis than the batch's, a Flatten, a
pool or a convolution, a Gather by Range(0, T), a OneHot of depth T or a Compress by a constant
condition still loaded batched, wrong (a tester, session 59): each op's output dims are traced
here to the input dims or input values onnx works them out from (_sources).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import onnx

from server.backends.graph_names import int_attribute

Dim = int | str | None
TOLD_SYMBOL = "__sluiceway_told_{}_{}"  # an input's unnamed dim past the first: its number, its axis
TOLD_PREFIX = TOLD_SYMBOL.split("{")[0]
# Ops whose output dim at an axis, counted from the end, is worked out from their data's dim there
# and from their other inputs' values only: a Slice's bounds, a TopK's k, a Tile's repeats, a Pad's
# pads, an Expand's shape, a Resize's scales, a Split's sizes, a pool's or a convolution's window
# (a convolution's channels are its weights' count: a value of no batched input where they are).
_DIM_BY_DIM = frozenset(
    {"Slice", "TopK", "Tile", "Pad", "Expand", "Resize", "Upsample", "Split", "DepthToSpace", "SpaceToDepth"}
    | {"MaxPool", "AveragePool", "LpPool", "Conv", "ConvInteger", "ConvTranspose", "QLinearConv"}
)
_BY_VALUE = frozenset({"Range", "NonZero", "ConstantOfShape"})  # lengths from their inputs' values only
_TRACED = _DIM_BY_DIM | _BY_VALUE | {"Concat", "Flatten", "Gather", "GatherElements", "OneHot", "Compress"}
Shapes = Callable[[str], "list[Dim] | None"]
Source = tuple[int, int]  # an input's index and one of its axes
Traced = tuple[list[list[list[Source]]], list[str]]  # each output's dims' sources; inputs read by value


def told_unnamed(probe: onnx.ModelProto, server_fed: Collection[str]) -> onnx.ModelProto:
    """`probe` with each dim past the first of the inputs clients send that has neither a size nor
    a name named (TOLD_SYMBOL): a length a request sets itself, the same alone as batched. The
    inputs the server feeds and the initializers are left as they are."""
    initializers = {init.name for init in probe.graph.initializer}
    for i, value in enumerate(probe.graph.input):
        if value.name in initializers or value.name in server_fed or not value.type.HasField("tensor_type"):
            continue
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if axis > 0 and not dim.HasField("dim_value") and not dim.dim_param:
                dim.dim_param = TOLD_SYMBOL.format(i, axis)
    return probe


def dims_made_apart(
    node: onnx.NodeProto, dims: Shapes, apart: Callable[[Dim], bool], free: Callable[[str], bool]
) -> set[str]:
    """The names of `node`'s output dims made from lengths not the batch's: each named output dim
    whose sources (_sources: input dims) are each a number or `apart`, where the inputs whose values
    the op reads for its dims are each made from no batched input (`free`)."""
    traced = _sources(node, dims)
    if traced is None or not all(free(name) for name in traced[1] if name):
        return set()
    made: set[str] = set()
    for out, sources in zip((name for name in node.output if name), traced[0], strict=False):
        shape = dims(out)
        if shape is None or len(shape) != len(sources):
            continue
        for dim, taken in zip(shape, sources, strict=True):
            if isinstance(dim, str) and all(_told(dims(node.input[i]), axis, apart) for i, axis in taken):
                made.add(dim)
    return made


def _told(shape: Sequence[Dim] | None, axis: int, apart: Callable[[Dim], bool]) -> bool:
    dim = shape[axis] if shape is not None and -len(shape) <= axis < len(shape) else None
    return isinstance(dim, int) or apart(dim)


def _sources(node: onnx.NodeProto, dims: Shapes) -> Traced | None:
    """Where each output dim of `node` comes from (input axes; none: from the values of the inputs
    of the second item only), or None: an op not traced here, or ranks unknown."""
    op, inputs = node.op_type, list(node.input)
    if op not in _TRACED:
        return None
    ranks = [len(shape) if name and (shape := dims(name)) is not None else -1 for name in inputs]
    outputs = [dims(name) for name in node.output if name]
    size = [len(shape or ()) for shape in outputs]
    if op in _BY_VALUE:
        return [[[] for _ in range(n)] for n in size], inputs
    if not inputs or ranks[0] < 0:
        return None
    axis = int_attribute(node, "axis", {"Flatten": 1, "OneHot": -1}.get(op, 0))
    if op in _DIM_BY_DIM or op == "Concat":
        data = range(len(inputs)) if op == "Concat" else range(1)
        if min(ranks[i] for i in data) < 0:
            return None  # a Concat's input of unknown rank: its share of the joined dim unknown
        by_end = [[[(i, -k) for i in data if k <= ranks[i]] for k in range(n, 0, -1)] for n in size]
        return by_end, [] if op == "Concat" else inputs[1:]
    if op == "Flatten":
        cut = axis % max(ranks[0], 1) if axis < 0 else axis  # axis -1 of a rank-3 input: 2
        return [[[(0, a) for a in range(cut)], [(0, a) for a in range(cut, ranks[0])]]], []
    if op in ("Gather", "GatherElements") and len(ranks) == 2 and ranks[1] >= 0:
        if op == "GatherElements":
            return [[[(1, a)] for a in range(ranks[1])]], []
        at = axis % ranks[0]
        taken = [(0, a) for a in range(at)] + [(1, a) for a in range(ranks[1])]
        return [[[s] for s in taken + [(0, a) for a in range(at + 1, ranks[0])]]], []
    if op == "OneHot" and len(inputs) >= 2:
        at = axis % (ranks[0] + 1)
        return [[[(0, a)] for a in range(at)] + [[]] + [[(0, a)] for a in range(at, ranks[0])]], [inputs[1]]
    if op == "Compress" and len(inputs) >= 2 and any(a.name == "axis" for a in node.attribute):
        at = axis % ranks[0]
        return [[[(0, a)] if a != at else [] for a in range(ranks[0])]], [inputs[1]]
    return None


def beside_batch(shape: Sequence[Dim] | None, batch: Collection[str]) -> set[str]:
    """The named dims of a tensor that carries the batch at one axis, at its other axes: the batch
    runs along one axis of a tensor (a tensor carrying it at two pairs rows, read as mixing), so a
    name onnx made up beside it is another length (a Reshape's [N, 2, unk], an If's, a DFT's, a
    Loop's stack [unk, N]; a tester, session 60: as a table's length they batched wrong, OK)."""
    if shape is None or sum(dim in batch for dim in shape) != 1:
        return set()
    return {dim for dim in shape if isinstance(dim, str) and dim not in batch}
