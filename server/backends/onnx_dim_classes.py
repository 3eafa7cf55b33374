"""Dims onnx's shape inference named apart that are the same size, named alike after it.

onnx's inference names a dim it cannot work out anew ('unk__3'): a Range's length unless its limit
is a constant, a Reshape's -1 unless every input dim is a number, and every axis broadcast from two
names. torch's legacy export of BERT-style embeddings (positions `arange(ids.shape[1])` added to
[N, seq, C]) and attention (`view(N, -1, H, D)`) left the hidden states' steps 'unk__5' where ids
has 'seq', and a pick at an ArgMax over ids's steps could not be matched with the rows' width (the
entity pooling of R-BERT was refused for dynamic batching; a tester, session 51).

Sizes proved equal at run time, for any run that succeeds, are put in one class:
- a Range(0, x.shape[k], 1)'s length and that dim;
- a Reshape's one output dim not read from its input and the quotient of its input's size by the
  output's other dims, where that is one dim (onnx_reshape_rows's products);
- the axes an elementwise op broadcasts (the output's and each input's not 1) where the inputs'
  are of one class, or one is a Slice's cut from 0 to the other's size (GPT-2's causal mask
  bias[:, :, k - q : k, :k], its start a size less a size of one class), and the axes a MatMul
  contracts.
- lengths computed alike from dims of one class (two `H // ws`), a Reshape's dims and its shape's
  entries, a roll's axis, an axis a Pad keeps, an Expand's axes and its shape's entries
  (onnx_dim_terms.py; session 67). A Reshape's only where onnxruntime runs and checks it
  (`checked_reshapes`: an unused one had named H and W alike since session 51).
A name onnx made is then renamed to a name the model declares in its class (else to one name of
its class). A class holding an input's first dim, the batch's, is left as it is: the reading
follows the batch by its own rules (arange(N) is each row's place, onnx_row_positions.py).
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import onnx

from server.backends.graph_names import graphs, int_attribute, shape_read
from server.backends.onnx_dim_terms import (
    TERM,
    Cut,
    checked_reshapes,
    computed_length,
    congruent,
    cut,
    joined_entries,
    rolled_axis,
    shape_entries,
    whole_number,
)
from server.backends.onnx_mixing_graph import value_dims
from server.backends.onnx_mixing_ops import BROADCAST_OPS
from server.backends.onnx_reshape_rows import dims_product, dims_quotient

Dim = int | str | None
ONNX_MADE = "unk__"  # how onnx's inference begins the names it makes
MAX_WALKS = 4  # walks of the graph, each leaving out the Ranges the last found to be arange(N)
_PASSED = frozenset({"Identity", "Cast", "Squeeze", "Unsqueeze"})  # a size's value, kept
_WIDE = (onnx.TensorProto.INT32, onnx.TensorProto.INT64)  # casts that keep any size (uint8 wraps at 256)


def declared_names(model: onnx.ModelProto) -> tuple[set[str], set[str]]:
    """The dim names `model` declares (its inputs', outputs' and value infos'), and its inputs'
    first dims (the batch's)."""
    graph = model.graph
    firsts = {
        value.type.tensor_type.shape.dim[0].dim_param
        for value in graph.input
        if value.type.tensor_type.shape.dim and value.type.tensor_type.shape.dim[0].dim_param
    }
    named = {
        dim.dim_param
        for value in (*graph.input, *graph.output, *graph.value_info)
        for dim in value.type.tensor_type.shape.dim
        if dim.dim_param
    }
    return named, firsts


class _Classes:
    """Union-find over dim names, each class with the number it is where one is known."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}
        self.number: dict[str, int] = {}  # a class's root -> its size
        self.at_most: dict[str, str] = {}  # a Slice's length -> the dim it is cut to (end = its size)

    def find(self, name: str) -> str:
        while self.parent.get(name, name) != name:
            name = self.parent[name]
        return name

    def join(self, first: Dim, second: Dim) -> None:
        if isinstance(first, int) and isinstance(second, str):
            first, second = second, first
        if not isinstance(first, str):
            return
        a = self.find(first)
        self.parent.setdefault(a, a)
        if isinstance(second, int):
            self.number.setdefault(a, second)
            return
        if isinstance(second, str):
            b = self.find(second)
            if a != b:
                root, child = min(a, b), max(a, b)
                self.parent[child] = root
                self.parent.setdefault(root, root)
                if child in self.number:
                    self.number.setdefault(root, self.number[child])

    def same(self, dim: Dim) -> Dim:
        """`dim`'s class: its number where known, else its root's name."""
        if not isinstance(dim, str):
            return dim
        root = self.find(dim)
        return self.number.get(root, root)


def named_alike(inferred: onnx.ModelProto, probe: onnx.ModelProto) -> None:
    """Rename in `inferred`'s value infos the dims onnx made that are proved the size of others
    (see the module's text); `probe`: the graph before inference, whose names are the model's."""
    if ONNX_MADE.encode() not in inferred.graph.SerializeToString():
        return  # no name onnx made: nothing to rename (5 ms on a graph of 24,000 nodes, the walk 160)
    declared, batch = declared_names(probe)
    classes, skipped = _Classes(), set[str]()
    for _ in range(MAX_WALKS):  # a Range found to be arange(N) after all is left out, and again
        classes, ranges = _Classes(), dict[str, str]()
        _read(inferred.graph, classes, batch, skipped, ranges)
        rows = {classes.find(name) for name in batch}
        found = {out for out, length in ranges.items() if classes.find(length) in rows}
        if not found:
            break
        skipped |= found
    else:
        return
    members: dict[str, set[str]] = {}
    for name in list(classes.parent):
        members.setdefault(classes.find(name), set()).add(name)
    renamed: dict[str, Dim] = {}
    for root, names in members.items():
        plain = [name for name in names if not name.startswith(TERM)]  # a computed length names no dim
        if not plain:
            continue
        own = sorted(name for name in plain if name in batch) or sorted(n for n in plain if n in declared)
        to: Dim = classes.number.get(root, own[0] if own else min(plain))
        renamed.update({name: to for name in names if name not in declared and name != to})
    if not renamed:
        return
    for graph in graphs(inferred.graph):
        for value in (*graph.value_info, *graph.output):
            for dim in value.type.tensor_type.shape.dim:
                if not dim.HasField("dim_param") or dim.dim_param not in renamed:
                    continue
                to = renamed[dim.dim_param]
                if isinstance(to, int):
                    dim.dim_value = to
                elif isinstance(to, str):
                    dim.dim_param = to


def _read(
    graph: onnx.GraphProto,
    classes: _Classes,
    batch: Collection[str],
    skipped: Collection[str],
    ranges: dict[str, str],
) -> None:
    """Join the dims `graph`'s nodes prove equal, in the graph's order; `ranges`: the Ranges
    whose length was joined (output -> length), but for those `skipped`."""
    values = (*graph.input, *graph.value_info, *graph.output)
    dims = {value.name: found for value in values if (found := value_dims(value)) is not None}
    dims.update({init.name: list(init.dims) for init in graph.initializer if init.name not in dims})
    sent = {value.name for value in graph.input}  # an initializer listed as an input a client may send
    constants = {init.name: init for init in graph.initializer if _small(init.dims) and init.name not in sent}
    shapes: dict[str, list[Dim]] = {}
    sizes: dict[str, Dim] = {}
    zeros: set[str] = set()  # a size less a size of its class: GPT-2's key_length - query_length
    entries: dict[str, list[Dim]] = {}  # a shape's entries, lengths or numbers (onnx_dim_terms.py)
    terms: dict[str, tuple[str, Dim, Dim]] = {}  # a computed length's name -> its op and operands
    checked = checked_reshapes(graph)  # the Reshapes onnxruntime runs and checks
    cuts: dict[str, Cut] = {}  # Slices of one axis by constants: a roll's halves
    for node in graph.node:
        op, out = node.op_type, node.output[0] if node.output else ""
        given = [dims.get(name) for name in node.input]
        if op == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[out] = node.attribute[0].t
        elif op == "Shape" and given and given[0] is not None:
            shapes[out] = shape_read(node, given[0])
        elif op == "Gather" and len(node.input) == 2 and node.input[0] in shapes:
            at, read = _whole(constants.get(node.input[1])), shapes[node.input[0]]
            if at is not None and int_attribute(node, "axis", 0) == 0 and -len(read) <= at < len(read):
                sizes[out] = read[at]
        elif op in _PASSED and node.input and node.input[0] in sizes and _keeps(node):
            sizes[out] = sizes[node.input[0]]
        elif op in _PASSED and node.input and node.input[0] in zeros:
            zeros.add(out)
        elif op == "Sub" and len(node.input) == 2 and all(name in sizes for name in node.input):
            first, second = (classes.same(sizes[name]) for name in node.input)
            if isinstance(first, str) and first == second:
                zeros.add(out)
        _computed(node, sizes, constants, entries, terms, classes, batch, dims)
        made = dims.get(out)
        if made is None:
            continue
        if op == "Range" and len(node.input) == 3 and node.input[1] in sizes and len(made) == 1:
            start, step = (_whole(constants.get(node.input[i])) for i in (0, 2))
            size = sizes[node.input[1]]
            if (start, step) == (0, 1) and isinstance(size, str) and size not in batch and out not in skipped:
                classes.join(made[0], size)  # not arange(N): each row's place, no tensor of the batch
                ranges[out] = size
        elif op in BROADCAST_OPS:
            _broadcast(classes, made, given)
        elif (
            op == "Expand" and given and given[0] is not None and node.input[1:2] and node.input[1] in entries
        ):
            _broadcast(classes, made, [given[0], entries[node.input[1]]])  # its shape's lengths as dims
        elif op == "Pad" and given and given[0] is not None and node.input[1:2] and node.input[1] in entries:
            _kept_unpadded(classes, node, given[0], made, entries[node.input[1]])
        elif op == "MatMul" and len(given) == 2 and _matrices(given[0], given[1]):
            a, b = given
            assert a is not None and b is not None
            classes.join(a[-1], b[-2])
            _broadcast(classes, made[:-2], [a[:-2], b[:-2]])
        elif op == "Reshape" and given and given[0] is not None and out in checked:
            shape = entries.get(node.input[1], []) if len(node.input) > 1 else []
            for dim, entry in joined_entries(shape, made, bool(int_attribute(node, "allowzero", 0))):
                classes.join(dim, entry)
            _reshaped(classes, given[0], made)
        elif op == "Concat" and (rolled := rolled_axis(node, cuts, len(made))) is not None:
            data, axis = rolled
            source = dims.get(data)
            if source is not None and len(source) == len(made):
                classes.join(made[axis], source[axis])
        elif op == "Slice" and given and given[0] is not None and len(given[0]) == len(made):
            if (piece := cut(node, constants, len(made))) is not None:
                cuts[out] = piece
            known = [constants.get(name) for name in node.input]
            if len(node.input) > 1 and known[1] is None and node.input[1] in zeros:
                known[1] = onnx.numpy_helper.from_array(np.zeros(1, np.int64))  # (one axis's start)
            _sliced(classes, node, given[0], made, known, sizes)
    congruent(terms, classes.same, classes.join)


def _kept_unpadded(
    classes: _Classes, node: onnx.NodeProto, source: list[Dim], made: list[Dim], pads: list[Dim]
) -> None:
    """A Pad's axes padded by 0 at both ends keep their input's length; not read where an `axes`
    input (opset 18) lists the pads in its own order (a tester, session 67: axes [1, 0] had the
    padded axis read as kept, and a view by its length batched wrong)."""
    if any(node.input[3:4]):
        return
    if len(pads) == 2 * len(made) == 2 * len(source):
        for axis, (before, after) in enumerate(zip(source, made, strict=True)):
            if pads[axis] == 0 and pads[axis + len(made)] == 0:
                classes.join(after, before)


def _computed(
    node: onnx.NodeProto,
    sizes: dict[str, Dim],
    constants: dict[str, onnx.TensorProto],
    entries: dict[str, list[Dim]],
    terms: dict[str, tuple[str, Dim, Dim]],
    classes: _Classes,
    batch: Collection[str],
    dims: dict[str, list[Dim]],
) -> None:
    """A length computed from lengths (H // ws), named by its computation; a shape put together of
    lengths and numbers (onnx_dim_terms.py). Not of the batch's size: the reading follows it."""
    out = node.output[0] if node.output else ""
    operands: list[Dim] = [sizes[n] if n in sizes else whole_number(constants.get(n)) for n in node.input]
    rows = {classes.find(name) for name in batch}
    of_batch = any(isinstance(term, str) and classes.find(term) in rows for term in operands)
    if not of_batch and (length := computed_length(node, operands, classes.same)) is not None:
        sizes[out] = length
        terms[length] = (node.op_type, operands[0], operands[1])
    if (found := shape_entries(node, sizes, constants, dims)) is not None:
        entries[out] = found


def _broadcast(classes: _Classes, made: list[Dim], given: list[list[Dim] | None]) -> None:
    """Each output axis joined with the inputs' dims there that are not 1, where those are one
    class (two names may be 1 and N at run time: no proof then), or two of which one is a Slice's
    length cut to the other's size (equal, or the op fails: position ids [:, :L] beside L steps)."""
    if any(dims is None for dims in given):
        return
    for back in range(1, len(made) + 1):
        there = [dims[-back] for dims in given if dims is not None and len(dims) >= back]
        wide = {same for dim in there if (same := classes.same(dim)) != 1}
        if len(wide) == 2 and _cut_to(classes, *wide):
            classes.join(*wide)
            wide = {same for dim in there if (same := classes.same(dim)) != 1}
        if len(wide) == 1:
            classes.join(made[-back], next(iter(wide)))


def _cut_to(classes: _Classes, first: Dim, second: Dim) -> bool:
    found = {(classes.same(cut), classes.same(to)) for cut, to in classes.at_most.items()}
    return (first, second) in found or (second, first) in found


def _sliced(
    classes: _Classes,
    node: onnx.NodeProto,
    source: list[Dim],
    made: list[Dim],
    constants: list[onnx.TensorProto | None],
    sizes: dict[str, Dim],
) -> None:
    """A Slice's axes it does not cut joined with its input's, and an axis of at least 2 values
    cut from 0 to a dim's size noted as at most that dim (equal where the dim is not more)."""
    starts = constants[1] if len(constants) > 1 else None
    if starts is None:
        return
    count = starts.dims[0] if len(starts.dims) == 1 else 0
    if not count:
        return
    axes = _ints(constants[3]) if len(node.input) > 3 and node.input[3] else list(range(count))
    steps = _ints(constants[4]) if len(node.input) > 4 and node.input[4] else [1] * count
    if axes is None or steps is None or len(axes) != count or len(steps) != count:
        return
    cut = {axis % len(source): at for at, axis in enumerate(axes)}
    for axis, (before, after) in enumerate(zip(source, made, strict=True)):
        if axis not in cut:
            classes.join(after, before)
            continue
        at = cut[axis]
        first, end = _ints(starts), sizes.get(node.input[2])
        if first is None or first[at] != 0 or steps[at] != 1 or not isinstance(before, int) or before < 2:
            continue
        if isinstance(after, str) and isinstance(end, str) and len(first) == 1:
            classes.at_most[after] = end


def _reshaped(classes: _Classes, source: list[Dim], made: list[Dim]) -> None:
    """A Reshape's one output dim not among its input's joined with what it must be."""
    source = [classes.same(dim) for dim in source]
    target = [classes.same(dim) for dim in made]
    unknown = [axis for axis, dim in enumerate(target) if isinstance(dim, str) and dim not in source]
    if len(unknown) != 1:
        return
    whole = dims_product(source)
    rest = dims_product([dim for axis, dim in enumerate(target) if axis != unknown[0]])
    if whole is None or rest is None:
        return
    left = dims_quotient(whole, rest)  # [a number, symbols...]
    if left is not None and (len(left) == 1 or (left[0] == 1 and len(left) == 2)):
        classes.join(target[unknown[0]], left[-1])


def _matrices(a: list[Dim] | None, b: list[Dim] | None) -> bool:
    return a is not None and b is not None and len(a) >= 2 and len(b) >= 2


def _keeps(node: onnx.NodeProto) -> bool:
    """Whether a node passing a size on keeps its value: a Cast only to 32 or 64 bits (a tester,
    session 52: Range(0, uint8(T)) for T = 257 was named T and a pick read the next row)."""
    return node.op_type != "Cast" or int_attribute(node, "to", 0) in _WIDE


def _ints(tensor: onnx.TensorProto | None) -> list[int] | None:
    if tensor is None or tensor.data_location == onnx.TensorProto.EXTERNAL:
        return None
    value = onnx.numpy_helper.to_array(tensor)
    return [int(v) for v in value.flat] if value.dtype.kind in "iu" else None


def _small(dims: Collection[int]) -> bool:
    """A scalar or a short list (a shape's numbers, a Pad's zeros)."""
    return len(dims) <= 1 and all(size <= 64 for size in dims)


def _whole(tensor: onnx.TensorProto | None) -> int | None:
    """A constant's one whole value (a Range's start or step, a Gather's index)."""
    if tensor is None or tensor.data_location == onnx.TensorProto.EXTERNAL:
        return None
    value = onnx.numpy_helper.to_array(tensor)
    if value.size != 1 or value.dtype.kind not in "iuf" or not float(value.flat[0]).is_integer():
        return None
    return int(value.flat[0])
