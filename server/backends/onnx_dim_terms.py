"""Lengths a graph computes from dims (H // ws), and axes a roll keeps, for onnx_dim_classes.py: the
same computation of dims of one class is one length, whichever value holds it.

HF transformers' Swin with a dynamic image size (optimum's default axes) partitions its padded,
rolled grid into windows by `view(B, H // ws, ws, W // ws, ws, C)` and puts them back by
`view(-1, H // ws, W // ws, ws, ws, C)`, each H // ws computed anew by torch's legacy exporter
(a Div of a Gather of a Shape), of the grid before the roll or after it, and its shifted windows'
mask by Ranges of the padded grid's H and W. onnx's inference names each Reshape's output dims anew
(`unk__`), so the load could not tell that the windows' count the mask is expanded by, and the
windows put back, are the partition's: refused for dynamic batching (tester c, session 66; on a
real export of transformers 5, session 67).

Here:
- a Div, Mul, Add or Mod of two lengths (dims, numbers, or lengths so computed), integers, is named
  by its op and its operands (`~Div(unk__26,4)`), and two such whose operands are of one class, once
  the whole graph is read, are one length (`congruent`);
- a shape a Concat puts together of such lengths and numbers gives a Reshape's output dims their
  entries' classes. An entry of 0 copies the input's dim instead (but with allowzero): a dim is 0
  only in an empty tensor, whose rows hold nothing to mix; a Mod, often 0 (a pad to a multiple), is
  not read so; a Div is, H // ws taken as at least 1 (an image smaller than its window: the windows'
  view fails in the exports seen; a tester, session 67, found no view of a 0 quotient batched);
- a Concat of Slice(x, [s:]) and Slice(x, [:s]) along x's axis (torch.roll's export) is as long as
  x there, whatever s is (both clamp s to the same place).

A Reshape proves its output's dims only where onnxruntime runs it (`checked_reshapes`): one no
graph output needs is dropped at load, and one whose only readers are Reshapes is fused with them
at the default optimization level, its shape never checked. A tester, session 67: an unused
Reshape([H, 1] -> [W, 1]) had H and W named alike, and x [N, H, K] viewed as [-1, W, K] batched
(wrong, OK, where H != W), since session 51.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import onnx

from server.backends.graph_names import int_attribute

Dim = int | str | None
Same = Callable[[Dim], Dim]  # a dim's class: its number, or its class's root name
TERM = "~"  # how the names of computed lengths begin (after every name onnx or a model gives)
_ARITHMETIC = frozenset({"Div", "Mul", "Add", "Mod"})  # of lengths, each at least 0: never -1
_TO_END = 1 << 31  # a Slice's end at least this: to the axis's end
# Readers that let onnxruntime skip a Reshape's check: another Reshape (fused with it), a Shape or a
# Size (folded where the shape is a constant's).
_UNCHECKING = frozenset({"Reshape", "Shape", "Size"})


@dataclass(frozen=True)
class Cut:
    """A Slice of `data` along one axis from `start` to `end`, step 1."""

    data: str
    axis: int
    start: int
    end: int


def computed_length(node: onnx.NodeProto, terms: list[Dim], same: Same) -> str | None:
    """The name of the length `node` computes from its two operands' lengths `terms` (each a dim, a
    number or a computed length's name; None: not a length)."""
    if node.op_type not in _ARITHMETIC or len(terms) != 2 or any(term is None for term in terms):
        return None
    if node.op_type == "Mod" and int_attribute(node, "fmod", 0):
        return None
    first, second = (same(term) for term in terms)
    if isinstance(first, int) and isinstance(second, int):
        return None  # numbers: folded elsewhere (onnx_fixed_lengths.py)
    if node.op_type in ("Div", "Mod") and (not isinstance(second, int) or second <= 0):
        return None  # by a length that may be 0 at run time: no value
    if any(isinstance(term, int) and term < 0 for term in (first, second)):
        return None  # a length less a number may be -1, which a Reshape reads otherwise
    raw = [str(term) for term in terms]
    if node.op_type in ("Add", "Mul"):
        raw.sort()  # (commutes: one name for a + b and b + a)
    return f"{TERM}{node.op_type}({raw[0]},{raw[1]})"


def congruent(
    terms: Mapping[str, tuple[str, Dim, Dim]], same: Same, join: Callable[[str, str], None]
) -> None:
    """Join the computed lengths whose ops are the same and whose operands are of one class, until
    none is left (a class found after a length was named: W's padded axis is known to be the
    mask's only at the mask's Range, after the windows' W // ws was computed)."""
    for _ in range(len(terms) + 1):
        found: dict[tuple[str, Dim, Dim], str] = {}
        joined = False
        for name, (op, first, second) in terms.items():
            pair = sorted((same(first), same(second)), key=str) if op in ("Add", "Mul") else None
            sign = (op, *pair) if pair else (op, same(first), same(second))
            other = found.setdefault(sign, name)  # type: ignore[arg-type]
            if other != name and same(other) != same(name):
                join(other, name)
                joined = True
        if not joined:
            return


def shape_entries(
    node: onnx.NodeProto,
    sizes: Mapping[str, Dim],
    constants: Mapping[str, onnx.TensorProto],
    dims: Mapping[str, list[Dim]],
) -> list[Dim] | None:
    """A Concat's (axis 0) entries: each input's length (`sizes`: a [1] value's), a constant's
    numbers, or None for each value of another input of known length; None where one's length is
    not known."""
    if node.op_type != "Concat" or int_attribute(node, "axis", 0) not in (0, -1):
        return None
    entries: list[Dim] = []
    for name in node.input:
        if name in sizes:
            entries.append(sizes[name])
            continue
        numbers = _numbers(constants.get(name))
        if numbers is not None:
            entries.extend(numbers)
            continue
        length = dims.get(name)
        if length is None or len(length) != 1 or not isinstance(length[0], int):
            return None
        entries.extend([None] * length[0])
    return entries


def cut(node: onnx.NodeProto, constants: Mapping[str, onnx.TensorProto], rank: int) -> Cut | None:
    """A Slice of one axis, step 1, its bounds constants."""
    if node.op_type != "Slice" or len(node.input) < 4 or rank < 1:
        return None
    starts, ends, axes = (_numbers(constants.get(node.input[i])) for i in (1, 2, 3))
    steps = _numbers(constants.get(node.input[4])) if len(node.input) > 4 and node.input[4] else [1]
    if starts is None or ends is None or axes is None or steps is None:
        return None
    if len(starts) != 1 or len(ends) != 1 or len(axes) != 1 or steps != [1]:
        return None
    return Cut(node.input[0], axes[0] % rank, starts[0], ends[0])


def rolled_axis(node: onnx.NodeProto, cuts: Mapping[str, Cut], rank: int) -> tuple[str, int] | None:
    """(x, axis) where `node` joins x[s:] and x[:s] along `axis` (either order): as long as x there."""
    if node.op_type != "Concat" or len(node.input) != 2 or rank < 1:
        return None
    axis = int_attribute(node, "axis", 0) % rank
    pieces = [cuts.get(name) for name in node.input]
    if any(piece is None or piece.axis != axis for piece in pieces):
        return None
    first, second = sorted((p for p in pieces if p is not None), key=lambda p: p.end < _TO_END)
    whole = first.data == second.data and first.end >= _TO_END and second.start == 0
    return (first.data, axis) if whole and first.start == second.end else None


def checked_reshapes(graph: onnx.GraphProto) -> set[str]:
    """The outputs of `graph`'s Reshapes that onnxruntime computes and checks: needed for a graph
    output, and read by an op other than a Reshape, a Shape or a Size (through Identities), or an
    output itself."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {value.name for value in graph.output}
    live = _needed(graph, outputs)

    def read(name: str, depth: int = 0) -> bool:
        if name in outputs:
            return True
        for reader in readers.get(name, []):
            if reader.op_type == "Identity" and depth < 8 and reader.output:
                if read(reader.output[0], depth + 1):
                    return True
            elif reader.op_type not in _UNCHECKING and any(out in live for out in reader.output):
                return True
        return False

    return {
        node.output[0]
        for node in graph.node
        if node.op_type == "Reshape" and node.output and node.output[0] in live and read(node.output[0])
    }


def _needed(graph: onnx.GraphProto, outputs: set[str]) -> set[str]:
    """The values a graph output is made from (a body's reads of them count: a Loop's, an If's)."""
    makers = {out: node for node in graph.node for out in node.output if out}
    live, stack = set[str](), list(outputs)
    while stack:
        name = stack.pop()
        if name in live:
            continue
        live.add(name)
        node = makers.get(name)
        if node is None:
            continue
        stack.extend(n for n in node.input if n)
        for attr in node.attribute:
            bodies = [attr.g] if attr.HasField("g") else list(attr.graphs)
            for body in bodies:
                stack.extend(n for inner in body.node for n in inner.input if n)
    return live


def _numbers(tensor: onnx.TensorProto | None) -> list[int] | None:
    if tensor is None or tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.dims) > 1:
        return None
    value = onnx.numpy_helper.to_array(tensor)
    return [int(v) for v in value.reshape(-1)] if value.dtype.kind in "iu" and value.size <= 64 else None


def joined_entries(entries: list[Dim], made: list[Dim], allowzero: bool = False) -> list[tuple[Dim, Dim]]:
    """The (output dim, entry) pairs a Reshape by `entries` proves equal: the lengths (not a number,
    which onnx's inference reads itself), not a Mod's, which may be 0 and copy the input's dim (but
    with `allowzero`, where a 0 is a 0)."""
    if len(entries) != len(made):
        return []
    return [
        (dim, entry)
        for dim, entry in zip(made, entries, strict=True)
        if isinstance(entry, str) and (allowzero or not entry.startswith(f"{TERM}Mod("))
    ]


def whole_number(tensor: onnx.TensorProto | None) -> int | None:
    """A constant's one whole value (a length's operand)."""
    numbers = _numbers(tensor)
    if numbers is None or len(numbers) != 1:
        return None
    return numbers[0]
