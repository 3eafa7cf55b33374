"""A Reshape whose shape's first entry is the batch's size times a length the graph computes from
other axes' lengths: it folds the batch into its first axis (onnx_row_mixing.py asks, before the
reshape's own reading, onnx_reshape_rows.py).

HF transformers' MobileViT with a dynamic image size unfolds its feature map [N, C, H, W] by
`reshape(N * C * nh, ph, nw, pw)` and `reshape(N * P, num_patches, -1)`, and folds it back by
`reshape(N * C * nh, nw, ph, pw)`, with nh = int(ceil(H / ph) * ph) // ph computed in floats
(a Cast, a Div, a Ceil, a Mul, a Cast back). onnx names those axes anew, and the reading could not
match them with the input's: the unfolding was refused as the batch's size taken elsewhere than the
batch's own axis (a fixed image size folds them to numbers, and batched).

Such a first entry N * K, where the batch leads the data and K is an integer made only of numbers
and lengths of axes that are not the batch's (the same for every request of a batch and for each
alone), keeps rows: a run that succeeds has N * K * (the other entries' product) values, so each
row's values are K whole slices of the first axis, [n * K, (n + 1) * K), as the row alone makes
them. K is followed back through a Mul, never a Cast (N * 2.5 cast to an integer is no multiple of
N), and a Reshape is read so only where onnxruntime runs and checks it (`checked`: one fused with
the next is never checked, and proves nothing about its output). The first axis is then a fold of
the batch for the ops after it; the other entries are read as before (one made from the batch's
size elsewhere than the batch's axis is still refused).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from server.backends.graph_names import int_attribute, shape_read
from server.backends.onnx_batch_names import BatchNames
from server.backends.onnx_batch_size_value import BatchSizeValues
from server.backends.onnx_mixing_graph import Value, value_array
from server.backends.onnx_partial_ints import MAX_ELEMENTS
from server.backends.onnx_reshape_rows import UNNAMED, Dim, Folded

Dims = list[Dim]
MAX_NODES = 256  # nodes a shape's entries are followed through at most
# Ops a length not of the batch is computed by (each deterministic, of its inputs alone).
_LENGTH_OPS = frozenset(
    {"Add", "Sub", "Mul", "Div", "Mod", "Neg", "Abs", "Ceil", "Floor", "Round", "Max", "Min", "Sqrt", "Pow"}
    | {"Cast", "Identity", "Unsqueeze", "Squeeze", "Concat"}
)
_SCALAR_MOVES = frozenset({"Identity", "Unsqueeze", "Squeeze"})  # a one-value tensor's value kept


@dataclass(frozen=True)
class Multiple:
    """A value as the batch's size to `power` times `factors` (numbers, dims' names, None for a
    length computed from other axes' lengths)."""

    power: int
    factors: tuple[Dim, ...]


def multiple_fold(
    node: onnx.NodeProto,
    values: BatchSizeValues,
    constants: Mapping[str, Value],
    dims: Callable[[str], Dims | None],
) -> Folded | None:
    """The fold a Reshape that onnxruntime runs and checks makes of the batch leading its data
    where its shape's first entry is N * K and its others are not made from N (see the module's
    text); None where it is not so. `values`: the walk's, its names and the tensors' makers."""
    names = values.names
    before, after = (dims(node.input[0]), dims(node.output[0])) if node.output else (None, None)
    checked = bool(node.output) and node.output[0] in names.checked
    if node.op_type != "Reshape" or len(node.input) < 2 or not checked or not before or not after:
        return None
    first = after[0]
    if not isinstance(first, str) or first == UNNAMED or first in names.batch or first in before:
        return None  # (a fold has a symbol of its own to be followed by)
    if names.row_size(before[0]) != 1 or any(dim in names.batch for dim in names.spelled(before[1:])):
        return None
    tracer = _Tracer(names, values, constants, dims)
    found = tracer.entry(node.input[1], 0)
    if found is None or found.power != 1 or any(isinstance(f, int) and f < 1 for f in found.factors):
        return None
    for at in range(1, len(after)):  # the others of no batch's size: the same for each row alone
        other = tracer.entry(node.input[1], at)
        if other is None or other.power != 0:
            return None
    return Folded(0, first, (before[0], *found.factors))


class _Tracer:
    """Follows a shape's entries back through the nodes that compute them."""

    def __init__(
        self,
        names: BatchNames,
        values: BatchSizeValues,
        constants: Mapping[str, Value],
        dims: Callable[[str], Dims | None],
    ) -> None:
        self.names, self.makers, self.sized = names, values.makers, values.sized
        self.constants, self.dims = constants, dims
        self.left = MAX_NODES
        self.free: dict[str, bool] = {}

    def entry(self, name: str, at: int) -> Multiple | None:
        """Entry `at` of `name` (flat) as a Multiple; None where it is not a product followed."""
        self.left -= 1
        if self.left < 0:
            return None
        value = self._constant(name)
        if value is not None:
            flat = value.reshape(-1)
            if value.dtype.kind not in "iu" or not 0 <= at < flat.size:
                return None
            return Multiple(0, (int(flat[at]),))
        node = self.makers.get(name)
        if node is None:
            return None  # a graph's input: a client's value
        op = node.op_type
        if op in ("Shape", "Gather"):
            return self._dim(node, at)
        if op in _SCALAR_MOVES and node.input and self._one(node.input[0]) and at == 0:
            return self.entry(node.input[0], 0)
        if op == "Concat" and int_attribute(node, "axis", 0) in (0, -1):
            return self._joined(node, at)
        if op == "Mul" and len(node.input) == 2 and at == 0 and all(self._one(n) for n in node.input):
            parts = [self.entry(n, 0) for n in node.input]
            if parts[0] is None or parts[1] is None:
                return None
            return Multiple(parts[0].power + parts[1].power, (*parts[0].factors, *parts[1].factors))
        return Multiple(0, (None,)) if self._free(name) else None

    def _dim(self, node: onnx.NodeProto, at: int) -> Multiple | None:
        """A Shape's entry, or a Gather of one by a constant index: the batch's size itself, or a
        length of another axis (not one made from the batch's size)."""
        if node.op_type == "Gather":
            index = self._constant(node.input[1]) if len(node.input) > 1 else None
            maker = self.makers.get(node.input[0])
            if index is None or maker is None or maker.op_type != "Shape" or int_attribute(node, "axis", 0):
                return None
            flat = index.reshape(-1)
            if index.dtype.kind not in "iu" or not 0 <= at < flat.size:
                return None
            node, at = maker, int(flat[at])
        data = self.dims(node.input[0]) if node.input else None
        read = shape_read(node, data) if data is not None else []
        if not -len(read) <= at < len(read):
            return None
        dim = read[at]
        if isinstance(dim, str) and dim in self.names.batch:
            return Multiple(1, ()) if self.names.itself(dim) else None
        if (
            dim is None
            or (isinstance(dim, str) and dim in self.names.made)
            or (isinstance(dim, int) and dim < 1)
        ):
            return None
        return Multiple(0, (dim,))

    def _joined(self, node: onnx.NodeProto, at: int) -> Multiple | None:
        """Entry `at` of a Concat of one-dimensional tensors of known lengths."""
        start = 0
        for name in node.input:
            value = self._constant(name)
            dims = list(value.shape) if value is not None else self.dims(name)
            if dims is None or len(dims) != 1 or not isinstance(dims[0], int):
                return None
            if start <= at < start + dims[0]:
                return self.entry(name, at - start)
            start += dims[0]
        return None

    def _constant(self, name: str) -> np.ndarray | None:
        return value_array(self.constants.get(name), MAX_ELEMENTS)

    def _one(self, name: str) -> bool:
        """Whether `name` holds one value (a scalar, or a tensor of ones)."""
        value = self._constant(name)
        dims = list(value.shape) if value is not None else self.dims(name)
        return dims is not None and all(dim == 1 for dim in dims)

    def _free(self, name: str) -> bool:
        """Whether `name` is computed from numbers and lengths of axes not the batch's alone."""
        if name in self.free:
            return self.free[name]
        self.left -= 1
        found = False
        if self.left >= 0 and name not in self.sized:
            node = self.makers.get(name)
            if self._constant(name) is not None:
                found = True
            elif node is not None and node.op_type in ("Shape", "Gather"):
                found = self._lengths(node)
            elif node is not None and node.op_type in _LENGTH_OPS:
                found = all(self._free(n) for n in node.input if n)
        self.free[name] = found
        return found

    def _lengths(self, node: onnx.NodeProto) -> bool:
        """Whether a Shape, or a Gather of one by constant indices, reads only lengths of axes not
        the batch's and not made from its size."""
        if node.op_type == "Gather":
            index = self._constant(node.input[1]) if len(node.input) > 1 else None
            maker = self.makers.get(node.input[0])
            if index is None or maker is None or maker.op_type != "Shape":
                return False
            picked = [int(i) for i in index.reshape(-1)]
        else:
            maker, picked = node, None
        data = self.dims(maker.input[0]) if maker.input else None
        if data is None:
            return False
        read = shape_read(maker, data)
        if picked is not None and not all(-len(read) <= i < len(read) for i in picked):
            return False
        dims = read if picked is None else [read[i] for i in picked]
        return all(
            isinstance(dim, int) or (isinstance(dim, str) and dim not in self.names.batch | self.names.made)
            for dim in dims
        )
