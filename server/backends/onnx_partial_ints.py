"""Small integer tensors known in part: a Pad's pads or a Tile's repeats that a graph computes from
its input's shape, some entries constants (torchvision's Swin pads its height and width by amounts
read from the shape, and its batch by a written 0; torch's legacy F.pad writes them through a
Concat, a Reshape to pairs, a reversing Slice and a Transpose). onnx_row_mixing.py asks whether such
a Pad or Tile leaves the batch's axis as it is: an unknown entry there may add rows (a tester,
session 51: pads [x.shape[1] // 4, 0, 0, 0] loaded batched and gave each request the row before
it, OK).

A tensor is kept as an array of Python ints, dim names (a Shape's entry for a named dim, kept
through moves: a Resize's sizes Concat(Shape(x)[:2], [h, w]) name the batch, and so keep its rows),
Made (computed from named dims: min(N, 2), N * H; onnx_size_slots.py asks where a shape holds one
made from the batch's) and None (computed otherwise, or not followed), at most MAX_ELEMENTS entries.
An Equal and a Where are followed entry by entry, so torch's legacy expand(N, -1, -1) (its -1s
replaced by Where(Equal(shape, -1), 1, shape)) is read as [N, 1, 1]; a dim is never negative.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx

from server.backends.graph_names import attribute, int_attribute, shape_read, slice_bound
from server.backends.onnx_dim_products import Factors, minus_one, of_dim, product
from server.backends.onnx_partial_arithmetic import COMPUTED as _COMPUTED
from server.backends.onnx_partial_arithmetic import MAX_ELEMENTS as MAX_ELEMENTS  # the callers' name
from server.backends.onnx_partial_arithmetic import Dims as Dims
from server.backends.onnx_partial_arithmetic import Entry as Entry
from server.backends.onnx_partial_arithmetic import Made as Made
from server.backends.onnx_partial_arithmetic import (
    computed,
    factors_of,
    spelled_factors,
    symbolic,
    whole_floats,
)
from server.backends.onnx_size_positions import slice_attribute, split_parts

Entries = tuple[int | None, ...]  # a tensor's entries, flat, None where computed
Constant = Callable[[int], "np.ndarray | None"]
_MOVES = frozenset(
    {"Concat", "Reshape", "Slice", "Transpose", "Squeeze", "Unsqueeze", "Gather", "ConstantOfShape"}
)
_KEPT = frozenset({"Cast", "Identity"})
_WIDE = frozenset(  # a Cast keeping any dim's value (a narrower one may wrap it: a tester, s52)
    {onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.UINT64, onnx.TensorProto.DOUBLE}
    | {onnx.TensorProto.FLOAT, onnx.TensorProto.UINT32}  # (exact below 2**24: no dim is larger)
)
_COMPARED = frozenset({"Equal", "Where"})
# A float tensor's entries are followed as ints while they are whole (onnx_partial_arithmetic.py).
_FLOATING = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE})
_ROOTS = frozenset({"Sqrt", "Pow"})  # only where whole (`_root`)
_FOLLOWED = _MOVES | _KEPT | _COMPUTED | _COMPARED | _ROOTS | {"Shape", "Split", "ReduceProd"}


class PartialInts:
    """Integer tensors whose entries are known in part (None where computed)."""

    def __init__(self) -> None:
        self.known: dict[str, np.ndarray] = {}
        self.floats: set[str] = set()  # tensors known to be float (a Cast to float's, and on)

    def within(self) -> PartialInts:
        inner = PartialInts()
        inner.known, inner.floats = dict(self.known), set(self.floats)
        return inner

    def entries(self, name: str, value: np.ndarray | None) -> Entries | None:
        """The entries of `name`, flat: its constant value, or what was followed (a dim's name as
        None); None: not even how many are known."""
        named = self.named(name, value)
        return None if named is None else tuple(v if isinstance(v, int) else None for v in named)

    def named(self, name: str, value: np.ndarray | None) -> tuple[Entry, ...] | None:
        """As `entries`, a Shape's entry for a named dim kept as its name, one computed from
        named dims as Made."""
        found = _of(value) if value is not None else self.known.get(name)
        return None if found is None else tuple(found.reshape(-1).tolist())

    def reshaped(
        self,
        node: onnx.NodeProto,
        dims: Callable[[str], Dims | None],
        constant: Constant,
        spelled: Callable[[Dims], Dims] = list,
    ) -> Dims | None:
        """A Reshape's output dims, those onnx could not name (None, or its own `unk__` names) read
        from its shape's entries known at load: a number, a dim's name (`b, c, h, w = x.shape` as a
        Split, then x.view(b, c, h * w): the batch's axis and 60 where onnx named neither), a 0
        copying the input's dim, a -1 the rest's quotient (`spelled`: a fold's dims, the batch's
        axis's own name for a name the batch goes by). None: nothing to add."""
        if node.op_type != "Reshape" or len(node.input) < 2 or not node.output or not node.output[0]:
            return None
        entries = self.named(node.input[1], constant(1))
        out, data = dims(node.output[0]), dims(node.input[0])
        if entries is None or (out is not None and len(out) != len(entries)):
            return None
        copies = not int_attribute(node, "allowzero", 0)  # a 0 copies the input's dim
        made: Dims = list(out) if out is not None else [None] * len(entries)
        for at, entry in enumerate(entries):
            dim = made[at]
            if isinstance(dim, int) or (isinstance(dim, str) and not dim.startswith("unk__")):
                continue  # onnx named it
            if isinstance(entry, int) and entry > 0:
                made[at] = entry
            elif isinstance(entry, int) and entry == 0 and copies and data is not None and at < len(data):
                made[at] = data[at]
            elif isinstance(entry, str):
                made[at] = entry
            elif entry == -1 and data is not None:  # the data's dims over the other entries'
                others = [
                    spelled_factors(
                        factors_of(data[k] if e == 0 and copies and k < len(data) else e), spelled
                    )
                    or _output_dim(out, k, spelled)
                    for k, e in enumerate(entries)
                    if k != at
                ]
                made[at] = dim if (worked := minus_one(spelled(list(data)), others)) is None else worked
        return made if made != out else None

    def see(
        self,
        node: onnx.NodeProto,
        dims: Callable[[str], Dims | None],
        constant: Constant,
        spelled: Callable[[Dims], Dims] = list,
    ) -> None:
        """Follow `node`'s output entries (`spelled`: a fold's dims, for a Div of one)."""
        op = node.op_type
        if op not in _FOLLOWED or not node.output or not node.output[0]:
            return
        if self._floating(node, constant):
            self.floats.update(name for name in node.output if name)
        if op not in ("Shape", "Concat", *_ROOTS) and not any(name in self.known for name in node.input):
            return  # nothing known in part comes in: a constant is folded elsewhere (not a float root)
        if op == "Split":  # `b, c, h, w = x.shape` (a tester, s57: read as unknown, a view was refused)
            whole = self.known.get(node.input[0])
            axis = int_attribute(node, "axis", 0)
            parts = split_parts(node, whole.size, constant) if whole is not None and whole.ndim == 1 else None
            if whole is not None and parts is not None and axis in (0, -1):
                starts = np.cumsum([0, *parts])
                for name, start, end in zip(node.output, starts[:-1], starts[1:], strict=True):
                    if name:
                        self.known[name] = whole[int(start) : int(end)]
            return
        try:
            made = self._made(node, dims, constant, spelled)
        except (ValueError, IndexError, TypeError):  # a graph onnxruntime would refuse: not followed
            return
        found = None if made is None else np.asarray(made, dtype=object)  # a scalar taken: an array
        if found is not None and found.size <= MAX_ELEMENTS:
            self.known[node.output[0]] = found

    def _floating(self, node: onnx.NodeProto, constant: Constant) -> bool:
        """Whether `node`'s output is float: a Cast to float, else an op of a float input."""
        op = node.op_type
        if op == "Cast":
            return int_attribute(node, "to", 0) in _FLOATING
        if op in ("Shape", "Equal", "ConstantOfShape"):
            return False
        taken = (
            range(len(node.input)) if op in _COMPUTED or op == "Concat" else (1, 2) if op == "Where" else (0,)
        )
        return any(
            node.input[i] in self.floats or ((value := constant(i)) is not None and value.dtype.kind == "f")
            for i in taken
            if i < len(node.input) and node.input[i]
        )

    def _made(
        self,
        node: onnx.NodeProto,
        dims: Callable[[str], Dims | None],
        constant: Constant,
        spelled: Callable[[Dims], Dims] = list,
    ) -> np.ndarray | None:
        op = node.op_type
        if op == "Shape":
            shape = dims(node.input[0])
            if shape is None:
                return None
            return np.array(
                [d if isinstance(d, (int, str)) else None for d in shape_read(node, shape)], dtype=object
            )
        if op == "ConstantOfShape":  # its fill (0 by default) as long as its shape says
            fill = attribute(node, "value", None)
            value = (
                onnx.numpy_helper.to_array(fill)
                if isinstance(fill, onnx.TensorProto)
                else np.zeros(1, np.int64)
            )
            lengths = self._given(node.input[0], dims, constant(0)) if node.input else None
            sizes = lengths.reshape(-1).tolist() if lengths is not None else None
            whole = sizes is not None and all(isinstance(v, int) and v >= 0 for v in sizes)  # a name: unknown
            # Counted before it is made: a shape read from an input's fixed dims can ask for W * W
            # entries (a 315-byte model had a load allocate 1.1 GiB at W = 12000; a tester, s57).
            small = whole and sizes is not None and math.prod(sizes) <= MAX_ELEMENTS
            known = _unknown(sizes if small else dims(node.output[0]))
            if known is None or value.dtype.kind not in "iu":
                return known
            known[...] = int(value.flat[0])
            return known
        arithmetic = op in _COMPUTED or op in _COMPARED
        wholes = arithmetic or op in _ROOTS  # a float constant's whole entries (Sqrt(16.0) at load)
        given = [self._given(name, dims, constant(i), wholes) for i, name in enumerate(node.input)]
        if op == "ReduceProd":
            return _product_of(node, given[0] if given else None, constant)
        if op in _ROOTS:
            return _root(node, given[0] if given else None, constant)
        floating = node.output[0] in self.floats
        if (
            op in _COMPUTED
            and given
            and all(g is not None and all(isinstance(v, int) for v in g.reshape(-1).tolist()) for g in given)
        ):
            done = computed(op, [g.astype(np.int64) for g in given if g is not None], _fmod(node), floating)
            if done is not None:
                return done
        if arithmetic and given and all(g is not None for g in given):
            entries = symbolic(op, [g for g in given if g is not None], _fmod(node), floating, spelled)
            if entries is not None:
                return entries
        if op in _COMPUTED or op in _COMPARED or not given or given[0] is None:
            return _unknown(dims(node.output[0]))
        data = given[0]
        if op == "Cast" and int_attribute(node, "to", 0) not in _WIDE:
            return _unknown(dims(node.output[0]))  # uint8(257) is 1: a dim's name no longer holds
        if op in _KEPT:
            return data
        if op == "Concat":
            parts = [part for part in given if part is not None]
            return (
                np.concatenate(parts, axis=int_attribute(node, "axis", 0))
                if len(parts) == len(given)
                else None
            )
        return _moved(node, data, constant)

    def _given(
        self, name: str, dims: Callable[[str], Dims | None], value: np.ndarray | None, floats: bool = False
    ) -> np.ndarray | None:
        """`name`'s entries; `floats`: a float constant's too, where all are whole (arithmetic's)."""
        if value is not None:
            return _of(value) if not floats or value.dtype.kind != "f" else whole_floats(value)
        if name in self.known:
            return self.known[name]
        return _unknown(dims(name))


def _output_dim(out: Dims | None, axis: int, spelled: Callable[[Dims], Dims]) -> Factors | None:
    """The output's own dim at `axis`, whatever its entry computes to (a Swin's H // ws, named by
    onnx_dim_classes.py alike with the windows' own): for the -1's quotient."""
    dim = out[axis] if out is not None and axis < len(out) else None
    return spelled_factors(of_dim(dim), spelled) if isinstance(dim, str) else None


def _root(node: onnx.NodeProto, data: np.ndarray | None, constant: Constant) -> np.ndarray | None:
    """A Sqrt, or a Pow by 0.5 or a whole exponent, of whole numbers, each entry where its result is
    whole (exact in floats too: a whole square root is, and a power up to 2**24): ViT's and Swin's
    int(L ** 0.5) of a token count read off a fixed dim, so that view(-1, h, h, C) is read (refused
    as not known since session 66's unplaced reshapes; a tester, s66). Others: not known."""
    exponent = np.asarray(0.5) if node.op_type == "Sqrt" else constant(1)
    if data is None or exponent is None or exponent.size != 1:
        return None
    power = float(exponent.reshape(-1)[0])
    if power != 0.5 and not (power.is_integer() and 0 <= power <= 8):
        return None
    made: list[int | None] = []
    for entry in data.reshape(-1).tolist():
        root = math.isqrt(entry) if isinstance(entry, int) and entry >= 0 else None
        if power == 0.5:
            made.append(root if root is not None and root * root == entry else None)
        else:
            whole = isinstance(entry, int) and abs(entry) ** int(power) <= 2**24
            made.append(entry ** int(power) if whole else None)
    return np.array(made, dtype=object).reshape(data.shape)


def _moved(node: onnx.NodeProto, data: np.ndarray, constant: Constant) -> np.ndarray | None:
    """A Reshape, Slice, Transpose, Squeeze, Unsqueeze or Gather of known-in-part entries, with
    constant arguments."""
    op = node.op_type
    if op == "Transpose":
        perm = attribute(node, "perm", None)
        return data.transpose([int(p) for p in perm]) if isinstance(perm, list) else data.T
    argument = constant(1) if len(node.input) > 1 else None
    if op in ("Squeeze", "Unsqueeze"):
        axes = argument if argument is not None else np.asarray(attribute(node, "axes", []), np.int64)
        if op == "Squeeze":
            return np.squeeze(data, axis=tuple(int(a) for a in axes.flat)) if axes.size else np.squeeze(data)
        for axis in sorted(int(a) % (data.ndim + axes.size) for a in axes.flat):
            data = np.expand_dims(data, axis)
        return data
    if op == "Slice" and len(node.input) == 1:  # before opset 10: its bounds are attributes
        return _sliced(data, [*(slice_attribute(node, n) for n in ("starts", "ends", "axes")), None])
    if argument is None:
        return None
    if op == "Reshape":
        shape = [data.shape[i] if d == 0 else int(d) for i, d in enumerate(argument.flat)]
        return data.reshape(shape)
    if op == "Gather":
        return np.take(data, argument.astype(np.int64), axis=int_attribute(node, "axis", 0))
    given = range(1, 5)
    return _sliced(data, [constant(i) if i < len(node.input) and node.input[i] else None for i in given])


def _sliced(data: np.ndarray, bounds: list[np.ndarray | None]) -> np.ndarray | None:
    """A Slice of known-in-part entries by its starts, ends, axes and steps (None: not given)."""
    if bounds[0] is None or bounds[1] is None:
        return None
    picked: list[int] = (
        [int(a) for a in bounds[2].flat] if bounds[2] is not None else list(range(bounds[0].size))
    )
    steps: list[int] = [int(s) for s in bounds[3].flat] if bounds[3] is not None else [1] * bounds[0].size
    index = [slice(None)] * data.ndim
    for axis, start, end, step in zip(picked, bounds[0].flat, bounds[1].flat, steps, strict=True):
        index[int(axis)] = slice(slice_bound(start), slice_bound(end), int(step))
    return data[tuple(index)]


def _fmod(node: onnx.NodeProto) -> bool:
    return bool(int_attribute(node, "fmod", 0))


def _product_of(node: onnx.NodeProto, data: np.ndarray | None, constant: Constant) -> np.ndarray | None:
    """A ReduceProd of a shape's entries, h * w of Shape(x)[2:] (ViT's view(-1, C, h * w)), as
    a product of them; other ReduceProds not followed."""
    computed = len(node.input) > 1 and bool(node.input[1])
    axes = constant(1) if computed else attribute(node, "axes", None)
    if axes is None and (computed or int_attribute(node, "noop_with_empty_axes", 0)):
        return None  # its axes computed, or none given and nothing reduced
    whole = axes is None or [int(a) for a in np.asarray(axes).reshape(-1)] in ([0], [-1])
    if data is None or data.ndim != 1 or not whole:
        return None
    factors = product([factors_of(entry) for entry in data.tolist()])
    names = frozenset(name for entry in data.tolist() for name in _names(entry))
    entry: Entry = None if factors is None else factors[0] if not names else Made(names, factors)
    return np.array([entry] if int_attribute(node, "keepdims", 1) else entry, dtype=object)


def _names(entry: Entry) -> frozenset[str]:
    return (
        frozenset({entry})
        if isinstance(entry, str)
        else entry.names
        if isinstance(entry, Made)
        else frozenset()
    )


def _of(value: np.ndarray) -> np.ndarray | None:
    """A constant's entries (a condition's as 0 and 1)."""
    if value.dtype.kind not in "iub" or value.size > MAX_ELEMENTS:
        return None
    return np.array(value.astype(np.int64).tolist(), dtype=object).reshape(value.shape)


def _unknown(shape: Dims | None) -> np.ndarray | None:
    """Computed entries, where how many is known."""
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    sizes = [int(d) for d in shape if isinstance(d, int)]
    return np.full(sizes, None, dtype=object) if 0 <= math.prod(sizes) <= MAX_ELEMENTS else None
