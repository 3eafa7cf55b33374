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
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import onnx

Dim = int | str | None
TOLD_SYMBOL = "__sluiceway_told_{}_{}"  # an input's unnamed dim past the first: its number, its axis
TOLD_PREFIX = TOLD_SYMBOL.split("{")[0]
# Ops whose output's dim at an axis (counted from the end) is worked out from their data's dim
# there and from their other inputs' values only: a Slice's bounds, a TopK's k, a Tile's repeats,
# a Pad's pads, an Expand's shape.
_DIM_BY_DIM = frozenset({"Slice", "TopK", "Tile", "Pad", "Expand"})


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
    node: onnx.NodeProto,
    dims: Callable[[str], list[Dim] | None],
    apart: Callable[[Dim], bool],
    free: Callable[[str], bool],
) -> set[str]:
    """The names of `node`'s output dims made from lengths not the batch's: for an op of
    _DIM_BY_DIM whose amounts (its inputs past the data) are each made from no batched input
    (`free`), each named output dim whose data's dim at that axis is a number or `apart`."""
    if node.op_type not in _DIM_BY_DIM or not node.input or not node.input[0]:
        return set()
    data = dims(node.input[0])
    if data is None or not all(free(name) for name in node.input[1:] if name):
        return set()
    made: set[str] = set()
    for out in (name for name in node.output[:2] if name):  # (a TopK's values and indices)
        shape = dims(out)
        if shape is None or len(shape) < len(data):
            continue
        for offset in range(1, len(shape) + 1):
            dim, given = shape[-offset], data[-offset] if offset <= len(data) else 1  # (Expand's new axes)
            if isinstance(dim, str) and (isinstance(given, int) or apart(given)):
                made.add(dim)
    return made
