"""Dims for the outputs onnx's inference left without a shape, where an op's form gives them from its
inputs' dims (onnx_row_mixing.py's walk asks; its own refinements feed the next op's).

A Split by lengths the graph computes has outputs of no shape in onnx's inference, and every op
after it too (RotaryEmbedding's expanded body: Split, Mul, Sub, Concat, Transpose). The walk reads an
op working along axes of a tensor made from the batch but of no known shape as mixing (where the
batch's axis is in it cannot be told; an Unsqueeze at a computed axis had moved it: a tester,
session 58), so such chains are given their dims here: a Split's and a Concat's are their inputs'
with the split or joined axis unknown, a Transpose's permuted, an elementwise op's broadcast.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx

from server.backends.graph_names import attribute, int_attribute
from server.backends.onnx_mixing_ops import keeps_whole

Dim = int | str | None
Dims = list[Dim]
Constant = Callable[[int], "np.ndarray | None"]  # the value of the node's input i, where known
_SAME = frozenset(  # one input's dims, unchanged
    {
        "Identity", "Cast", "Neg", "Abs", "Relu", "Sigmoid", "Tanh", "Exp", "Log", "Sqrt", "Erf",
        "Not", "Reciprocal", "Sin", "Cos", "Floor", "Ceil", "Round", "Softplus", "Gelu", "Sign",
        "LeakyRelu", "Elu", "HardSigmoid", "HardSwish", "Dropout", "Clip",
    }
)  # fmt: skip
_REDUCTIONS = frozenset(
    {
        "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
        "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
    }
)  # fmt: skip
_BROADCAST = frozenset(
    {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Where", "Equal", "Less", "Greater", "And", "Or"}
)


def _broadcast_dim(dims: Sequence[Dim]) -> Dim:
    """One axis of a broadcast: the inputs' dims there, 1s dropped. An unknown beside a named or
    fixed dim is taken as that dim (it is 1 or the same, or the run fails)."""
    kept = [d for d in dims if d != 1]
    known = {d for d in kept if d is not None}
    if not kept:
        return 1
    return known.pop() if len(known) == 1 else None


def _broadcast(shapes: Sequence[Dims]) -> Dims:
    rank = max(len(s) for s in shapes)
    ones: Dims = [1] * rank
    padded = [ones[: rank - len(s)] + list(s) for s in shapes]
    return [_broadcast_dim([s[k] for s in padded]) for k in range(rank)]


def _with_unknown(dims: Dims, axis: int) -> Dims | None:
    if not -len(dims) <= axis < len(dims):
        return None
    out = list(dims)
    out[axis % len(dims)] = None
    return out


def _axes(node: onnx.NodeProto, constant: Constant, index: int, name: str = "axes") -> list[int] | None:
    """An int list given as the attribute `name` (older opsets) or as input `index`; None where
    computed, [] where not given."""
    given = attribute(node, name, None)
    if isinstance(given, list):
        return [int(a) for a in given]
    if index < len(node.input) and node.input[index]:
        found = constant(index)
        return None if found is None else [int(a) for a in found.reshape(-1)]
    return []


def _reduced(node: onnx.NodeProto, dims: Dims, axes: list[int] | None) -> Dims | None:
    """A reduction's output: its axes 1 (kept) or gone; none given, every axis or (with
    noop_with_empty_axes) none. None where its axes are computed or out of range."""
    if axes is None or not all(-len(dims) <= a < len(dims) for a in axes):
        return None
    if not axes and int_attribute(node, "noop_with_empty_axes", 0):
        return list(dims)
    reduced = {a % len(dims) for a in axes} if axes else set(range(len(dims)))
    keep = int_attribute(node, "keepdims", 1)
    return [1 if k in reduced else d for k, d in enumerate(dims) if keep or k not in reduced]


def filled_dims(
    node: onnx.NodeProto, dims_of: Callable[[str], Dims | None], constant: Constant
) -> list[Dims | None]:
    """Dims for each of `node`'s outputs (None where its form does not give them: a computed axis
    leaves it so, and the walk reads what follows as of no known shape)."""
    inputs = [dims_of(name) if name else None for name in node.input]
    for at, name in enumerate(node.input):  # an initializer's dims, where no value info has them
        if inputs[at] is None and name and (value := constant(at)) is not None:
            inputs[at] = list(value.shape)
    op = node.op_type
    none: list[Dims | None] = [None] * len(node.output)
    if not inputs or inputs[0] is None:
        return none
    first = inputs[0]
    if op == "Split":
        return [_with_unknown(first, int_attribute(node, "axis", 0))] * len(node.output)
    if op == "Concat":
        if any(d is None or len(d) != len(first) for d in inputs):
            return none
        axis = int_attribute(node, "axis", 0)
        joined = [_broadcast_dim([d[k] for d in inputs]) for k in range(len(first))]  # type: ignore[index]
        return [_with_unknown(joined, axis), *none[1:]]
    if op == "Transpose":
        perm = attribute(node, "perm", None)
        order = list(perm) if isinstance(perm, list) else list(range(len(first)))[::-1]
        if sorted(order) != list(range(len(first))):
            return none
        return [[first[k] for k in order], *none[1:]]
    if op == "Slice":  # the axes it cuts unknown; where its axes are computed, none known
        axes, starts = _axes(node, constant, 3), _axes(node, constant, 1, "starts")
        ends, steps = _axes(node, constant, 2, "ends"), _axes(node, constant, 4, "steps")
        if axes is None:
            return none
        out: Dims = list(first)
        for k, axis in enumerate(axes or range(len(first))):
            bounds = [
                (v[k] if v is not None and k < len(v) else None)
                for v in (starts, ends, [1] * (k + 1) if steps == [] else steps)  # [] : not given, 1s
            ]
            if -len(first) <= axis < len(first) and not keeps_whole(*bounds):  # a whole axis keeps its dim
                out[axis % len(first)] = None
        return [out, *none[1:]]
    if op == "Unsqueeze":
        axes = _axes(node, constant, 1)
        rank = len(first) + len(axes or [])
        added = {a % rank for a in axes or [] if -rank <= a < rank}
        if not axes or len(added) != len(axes):  # none, out of range or repeated (an invalid model)
            return none
        rest = iter(first)
        return [[1 if k in added else next(rest) for k in range(rank)], *none[1:]]
    if op == "Gather" and len(inputs) > 1 and inputs[1] is not None:  # a table looked up by indices
        axis = int_attribute(node, "axis", 0) % max(len(first), 1)  # (GPT-2's wpe[position_ids])
        return [[*first[:axis], *inputs[1], *first[axis + 1 :]], *none[1:]]
    if op in _REDUCTIONS:  # axes computed at load (a LayerNorm's Size(Shape(x)) - 1; a tester, s61)
        return [_reduced(node, first, _axes(node, constant, 1)), *none[1:]]
    if op == "STFT":  # [batch, frames, bins, 2]: the batch kept, the rest computed
        return [[first[0] if first else None, None, None, 2], *none[1:]]
    if op in _SAME:
        return [list(first), *none[1:]]
    if op in _BROADCAST and all(d is not None for d in inputs):
        return [_broadcast([d for d in inputs if d is not None]), *none[1:]]
    return none


_MOVING = {"Unsqueeze": 1, "Squeeze": 1, "Reshape": 1, "Expand": 1, "Tile": 1, "Slice": 3, "Split": 1}


def moved_unseen(
    name: str,
    makers: Mapping[str, onnx.NodeProto],
    dims_of: Callable[[str], Dims | None],
    constant: Callable[[str], bool],
) -> bool:
    """Whether a tensor of no known shape may have had the batch's axis moved where no reading saw
    it: made, through ops of no known shape, by an Unsqueeze, Squeeze, Reshape, Expand, Tile, Slice
    or Split whose axes or shape are computed (inside an If branch, an Unsqueeze at a computed axis
    before a Softmax batched wrong; a tester, session 58). An If's or a Loop's output of no shape
    is not: its bodies are read (Silero VAD's nested Ifs return shapes of two ranks)."""
    seen: set[str] = set()
    stack = [name]
    while stack and len(seen) < 256:
        top = stack.pop()
        maker = makers.get(top)
        if top in seen or maker is None or dims_of(top) is not None:
            continue
        seen.add(top)
        at = _MOVING.get(maker.op_type)
        if at is not None and at < len(maker.input) and maker.input[at] and not constant(maker.input[at]):
            return True
        if maker.op_type not in ("If", "Loop", "Scan"):
            stack.extend(i for i in maker.input if i)
    return False


def filled_where_unsure(
    node: onnx.NodeProto, dims_of: Callable[[str], Dims | None], constant: Constant
) -> list[Dims | None]:
    """`filled_dims` where onnx left an output without a shape, or with dims it named `unk__` (its
    own names for lengths it could not tell: a Slice by computed ends left a table's 1 so, and its
    Expand's, then x + table, refused; a tester, session 59): those dims the op's form gives, the
    rest as onnx had them. None for an output to which nothing is added."""
    had = [dims_of(out) if out else None for out in node.output]
    unsure = (dims is None or any(map(_unk, dims)) for out, dims in zip(node.output, had, strict=True) if out)
    if not any(unsure):
        return [None] * len(node.output)
    merged: list[Dims | None] = []
    for old, new in zip(had, filled_dims(node, dims_of, constant), strict=True):
        if new is None or (old is not None and len(old) != len(new)):
            merged.append(None)
            continue
        if old is None:
            made = list(new)
        else:  # only onnx's own unk__ names replaced, and only by what the op's form knows
            made = [n if _unk(o) and n is not None else o for o, n in zip(old, new, strict=True)]
        merged.append(made if made != old else None)
    return merged


def _unk(dim: Dim) -> bool:
    return isinstance(dim, str) and dim.startswith("unk__")
