"""The counts corpus of scripts/row_mixing_sweep.py (`--corpus counts`): graphs that read the batch's
size N (Shape(x)[0], Size) and use it as a shape, a size, a count, an axis or a value, written
directly with onnx.helper. Each name starts with count_ and ends in _rowwise (N only as the batch's
own axis's length: a ViT class token expanded to it, x.view(N, -1), a multi-head fold N * H, DETR's
time-major queries tiled by N: must batch and answer right) or _mixing (N as a width, a crop, an
axis, a trip count or a value: must be refused batching, or answer each request as alone; the
mixing ones are in size_count_cases_more.py). Each graph output is declared with its shape, 'N' for
dim 0 and named dims where they follow N, as exporters save them, so that a load reaches the
row-mixing reading rather than failing for want of an output shape.

    count_sources() -> list[Source]             (row_mixing_cases.Source; inputs have 4 rows in dim 0)
    count_cases(limit, only) -> list[Case | Skipped]   (built, the outputs' shapes as written)

`python scripts/size_count_cases.py` checks each with onnxruntime: a _rowwise one answers 4 rows
run together as each row alone, a _mixing one does not (other values, or another shape).
"""

from __future__ import annotations

import copy
import sys
import warnings
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper
from row_mixing_cases import Case, Skipped, Source, build_cases

F, I64 = T.FLOAT, T.INT64
D = 4  # the model width of the transformer-like cases


def f32(seed: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


class Graph:
    """A graph being written: its nodes and initializers, each made name returned for the next."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.made = 0

    def _name(self, prefix: str) -> str:
        self.made += 1
        return f"{prefix}{self.made}"

    def const(self, value, dtype=np.int64) -> str:
        name = self._name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op: str, inputs: Sequence[str], out: str | None = None, outs: int = 1, **attrs) -> str:
        """The node's first output (named `out`, or made); `outs` outputs in all (the rest named
        after the first, with '_1', '_2', ...)."""
        first = out or self._name(op.lower())
        names = [first] + [f"{first}_{k}" for k in range(1, outs)]
        self.nodes.append(h.make_node(op, list(inputs), names, **attrs))
        return first

    def size(self, x: str = "x", axis: int = 0) -> str:
        """Shape(x)[axis] as a scalar int64 (the batch's size N at axis 0)."""
        return self.op("Gather", [self.op("Shape", [x]), self.const(axis)])

    def size1(self, x: str = "x", axis: int = 0) -> str:
        """Shape(x)[axis] as a [1] int64, for a Concat of a shape."""
        return self.op("Unsqueeze", [self.size(x, axis), self.const([0])])

    def min_n(self, cap: int, x: str = "x") -> str:
        """Min(N, cap) as a [1] int64: 1 for one request alone, `cap` for 4 batched."""
        return self.op("Min", [self.size1(x), self.const([cap])])

    def cat(self, *parts: str, axis: int = 0) -> str:
        return self.op("Concat", list(parts), axis=axis)

    def model(
        self, inputs: Sequence[tuple[str, Sequence]], outputs: Sequence[tuple[str, Sequence]], opset: int = 17
    ) -> onnx.ModelProto:
        """The model, float32 inputs and outputs with the (symbolic) shapes given."""
        graph = h.make_graph(
            self.nodes,
            "g",
            [h.make_tensor_value_info(name, F, list(shape)) for name, shape in inputs],
            [h.make_tensor_value_info(name, F, list(shape)) for name, shape in outputs],
            self.inits,
        )
        m = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m


def filled(value: float | int, dtype: int = I64) -> onnx.TensorProto:
    """A ConstantOfShape's `value` attribute."""
    return h.make_tensor("value", dtype, [1], [value])


# ---------------------------------------------------------------------------------------------
# Rowwise: the batch's size only as the length of the batch's own axis


def vit_cls_legacy_expand() -> Source:
    """torch's legacy cls.expand(N, -1, -1): Where(Equal(shape, -1), ones, shape) is [N, 1, 1]."""
    g = Graph()
    shape = g.cat(g.size1(), g.const([-1]), g.const([-1]))
    ones = g.op("ConstantOfShape", [g.const([3])], value=filled(1))
    eq = g.op("Equal", [shape, g.op("Mul", [ones, g.const(-1)])])
    cls = g.op("Expand", [g.const(f32(1, 1, 1, D), np.float32), g.op("Where", [eq, ones, shape])])
    g.op("Concat", [cls, "x"], out="y", axis=1)
    m = g.model([("x", ["N", 3, D])], [("y", ["N", 4, D])])
    return Source("count_vit_cls_legacy_expand_rowwise", m, (f32(2, 4, 3, D),))


def tile_cls_repeat() -> Source:
    """cls.repeat(N, 1, 1) ahead of the tokens."""
    g = Graph()
    cls = g.op("Tile", [g.const(f32(3, 1, 1, D), np.float32), g.cat(g.size1(), g.const([1, 1]))])
    g.op("Concat", [cls, "x"], out="y", axis=1)
    m = g.model([("x", ["N", 3, D])], [("y", ["N", 4, D])])
    return Source("count_tile_cls_repeat_rowwise", m, (f32(4, 4, 3, D),))


def pos_slice_add() -> Source:
    """pos[:, :T] + x: a positional table sliced by Shape(x)[1]."""
    g = Graph()
    pos = g.op("Slice", [g.const(f32(5, 1, 8, D), np.float32), g.const([0]), g.size1("x", 1), g.const([1])])
    g.op("Add", ["x", pos], out="y")
    m = g.model([("x", ["N", 3, D])], [("y", ["N", 3, D])])
    return Source("count_pos_slice_add_rowwise", m, (f32(6, 4, 3, D),))


def new_zeros_cat() -> Source:
    """cat(x, x.new_zeros(N, 1)) along the features."""
    g = Graph()
    zeros = g.op("ConstantOfShape", [g.cat(g.size1(), g.const([1]))], value=filled(0.0, F))
    g.op("Concat", ["x", zeros], out="y", axis=1)
    m = g.model([("x", ["N", 5])], [("y", ["N", 6])])
    return Source("count_new_zeros_cat_rowwise", m, (f32(7, 4, 5),))


def view_flat() -> Source:
    """x.view(N, -1)."""
    g = Graph()
    g.op("Reshape", ["x", g.cat(g.size1(), g.const([-1]))], out="y")
    m = g.model([("x", ["N", 3, D])], [("y", ["N", 3 * D])])
    return Source("count_view_flat_rowwise", m, (f32(8, 4, 3, D),))


def multi_head_fold() -> Source:
    """reshape(N, T, H, d) -> transpose -> reshape(N * H, T, d) -> softmax -> reshape(N, H, T, d)."""
    g = Graph()
    n1, t1 = g.size1(), g.size1("x", 1)
    heads = g.op("Reshape", ["x", g.cat(n1, t1, g.const([2, 4]))])
    moved = g.op("Transpose", [heads], perm=[0, 2, 1, 3])
    folded = g.op("Reshape", [moved, g.cat(g.op("Mul", [n1, g.const([2])]), t1, g.const([4]))])
    soft = g.op("Softmax", [folded], axis=-1)
    g.op("Reshape", [soft, g.cat(n1, g.const([2]), t1, g.const([4]))], out="y")
    m = g.model([("x", ["N", 3, 8])], [("y", ["N", 2, 3, 4])])
    return Source("count_multi_head_fold_rowwise", m, (f32(9, 4, 3, 8),))


def flatten_matmul() -> Source:
    """reshape(N * T, D) @ W -> reshape(N, T, E)."""
    g = Graph()
    n1, t1 = g.size1(), g.size1("x", 1)
    flat = g.op("Reshape", ["x", g.cat(g.op("Mul", [n1, t1]), g.const([D]))])
    mm = g.op("MatMul", [flat, g.const(f32(10, D, 5), np.float32)])
    g.op("Reshape", [mm, g.cat(n1, t1, g.const([5]))], out="y")
    m = g.model([("x", ["N", 3, D])], [("y", ["N", 3, 5])])
    return Source("count_flatten_matmul_rowwise", m, (f32(11, 4, 3, D),))


def repeat_interleave() -> Source:
    """x.repeat_interleave(2, dim=1): Unsqueeze, Expand to [N, C, 2], Reshape [N, 2C]."""
    g = Graph()
    n1 = g.size1()
    wide = g.op("Expand", [g.op("Unsqueeze", ["x", g.const([2])]), g.cat(n1, g.const([3, 2]))])
    g.op("Reshape", [wide, g.cat(n1, g.const([6]))], out="y")
    m = g.model([("x", ["N", 3])], [("y", ["N", 6])])
    return Source("count_repeat_interleave_rowwise", m, (f32(12, 4, 3),))


def detr_time_major() -> Source:
    """DETR's time-major decoder input: x as [T, N, D], queries [Q, 1, D] tiled by [1, N, 1] ahead."""
    g = Graph()
    tokens = g.op("Transpose", ["x"], perm=[1, 0, 2])
    repeats = g.cat(g.const([1]), g.size1(), g.const([1]))
    queries = g.op("Tile", [g.const(f32(13, 2, 1, D), np.float32), repeats])
    both = g.op("Concat", [queries, tokens], axis=0)
    g.op("Transpose", [both], out="y", perm=[1, 0, 2])
    m = g.model([("x", ["N", 3, D])], [("y", ["N", 5, D])])
    return Source("count_detr_time_major_rowwise", m, (f32(14, 4, 3, D),))


def attention_mask_expand() -> Source:
    """mask[:, None, None, :] expanded to [N, 1, S, S], choosing scores or -1e4."""
    g = Graph()
    wide = g.op("Unsqueeze", ["mask", g.const([1, 2])])
    full = g.op("Expand", [wide, g.cat(g.size1("mask"), g.const([1, 4, 4]))])
    keep = g.op("Greater", [full, g.const(0.0, np.float32)])
    g.op("Where", [keep, "x", g.const(-1e4, np.float32)], out="y")
    m = g.model([("mask", ["N", 4]), ("x", ["N", 1, 4, 4])], [("y", ["N", 1, 4, 4])])
    return Source("count_attention_mask_expand_rowwise", m, (f32(15, 4, 4), f32(16, 4, 1, 4, 4)))


def resize_sizes_kept() -> Source:
    """Resize to sizes Concat(Shape(x)[:2], [8, 8]) (nearest)."""
    g = Graph()
    lead = g.op("Slice", [g.op("Shape", ["x"]), g.const([0]), g.const([2])])
    g.op("Resize", ["x", "", "", g.cat(lead, g.const([8, 8]))], out="y", mode="nearest")
    m = g.model([("x", ["N", 2, 4, 4])], [("y", ["N", 2, 8, 8])])
    return Source("count_resize_sizes_kept_rowwise", m, (f32(17, 4, 2, 4, 4),))


def affine_grid_sample() -> Source:
    """AffineGrid(theta, [N, 1, 4, 4]) then GridSample of x (opset 20)."""
    g = Graph()
    grid = g.op("AffineGrid", ["theta", g.cat(g.size1(), g.const([1, 4, 4]))])
    g.op("GridSample", ["x", grid], out="y")
    m = g.model([("theta", ["N", 2, 3]), ("x", ["N", 1, 4, 4])], [("y", ["N", 1, 4, 4])], opset=20)
    theta = np.tile(np.array([[1, 0, 0], [0, 1, 0]], np.float32), (4, 1, 1)) + 0.2 * f32(18, 4, 2, 3)
    return Source("count_affine_grid_sample_rowwise", m, (theta, f32(19, 4, 1, 4, 4)))


def max_unpool_shape() -> Source:
    """MaxPool then MaxUnpool back to output_shape = Shape(x)."""
    g = Graph()
    pooled = g.op("MaxPool", ["x"], outs=2, kernel_shape=[2, 2], strides=[2, 2])
    shape = g.op("Shape", ["x"])
    g.op("MaxUnpool", [pooled, pooled + "_1", shape], out="y", kernel_shape=[2, 2], strides=[2, 2])
    m = g.model([("x", ["N", 1, 4, 4])], [("y", ["N", 1, 4, 4])])
    return Source("count_max_unpool_shape_rowwise", m, (f32(20, 4, 1, 4, 4),))


def slice_to_n() -> Source:
    """hidden[: x.size(0)] then a Softmax along the row: a Slice from 0 to N keeps every row."""
    g = Graph()
    rows = g.op("Slice", ["x", g.const([0]), g.size1(), g.const([0])])
    g.op("Softmax", [rows], out="y", axis=-1)
    m = g.model([("x", ["N", D])], [("y", ["N", D])])
    return Source("count_slice_to_n_rowwise", m, (f32(21, 4, D),))


def view_through_where() -> Source:
    """x.view(N, -1) with its shape through an Equal and a Where, as a legacy export may write it."""
    g = Graph()
    shape = g.cat(g.size1(), g.const([-1]))
    eq = g.op("Equal", [shape, g.const([-1])])
    g.op("Reshape", ["x", g.op("Where", [eq, g.const([-1]), shape])], out="y")
    m = g.model([("x", ["N", 2, 3])], [("y", ["N", 6])])
    return Source("count_view_through_where_rowwise", m, (f32(22, 4, 2, 3),))


def split_shape_view() -> Source:
    """b, c, h, w = x.shape as a Split (opset 18's num_outputs), x.view(b, c, h * w).softmax(-1)."""
    g = Graph()
    b, c, hh, ww = (
        g.op("Split", [g.op("Shape", ["x"])], outs=4, axis=0, num_outputs=4) + s
        for s in ("", "_1", "_2", "_3")
    )
    rows = g.op("Reshape", ["x", g.cat(b, c, g.op("Mul", [hh, ww]))])
    g.op("Softmax", [rows], out="y", axis=-1)
    m = g.model([("x", ["N", 3, 2, 2])], [("y", ["N", 3, 4])], opset=18)
    return Source("count_split_shape_view_rowwise", m, (f32(23, 4, 3, 2, 2),))


def loop_kept_own_shape() -> Source:
    """lo = a Loop of one turn carrying Relu(x) as it takes it, reshaped by its own Shape and
    softmaxed along its width (onnx tells lo no rank; refused before session 65)."""
    body = h.make_graph(
        [h.make_node("Identity", ["go"], ["go_out"]), h.make_node("Identity", ["c_in"], ["c_out"])],
        "body",
        [
            h.make_tensor_value_info("turn", I64, []),
            h.make_tensor_value_info("go", T.BOOL, []),
            h.make_tensor_value_info("c_in", F, None),
        ],
        [h.make_tensor_value_info("go_out", T.BOOL, []), h.make_tensor_value_info("c_out", F, None)],
    )
    g = Graph()
    lo = g.op("Loop", [g.const(1), g.const(True, np.bool_), g.op("Relu", ["x"])], body=body)
    g.op("Softmax", [g.op("Reshape", [lo, g.op("Shape", [lo])])], out="y", axis=-1)
    return Source(
        "count_loop_kept_own_shape_rowwise", g.model([("x", ["N", 3])], [("y", ["N", 3])]), (f32(24, 4, 3),)
    )


ROWWISE = (
    vit_cls_legacy_expand, tile_cls_repeat, pos_slice_add, new_zeros_cat, view_flat, multi_head_fold,
    flatten_matmul, repeat_interleave, detr_time_major, attention_mask_expand, resize_sizes_kept,
    affine_grid_sample, max_unpool_shape, slice_to_n, view_through_where, split_shape_view,
    loop_kept_own_shape,
)  # fmt: skip


def count_sources() -> list[Source]:
    """Every source, sorted by name (a builder that fails is reported and left out)."""
    from computed_axes_cases import COMPUTED_AXES
    from shifted_window_cases import SHIFTED_WINDOWS
    from size_count_cases_more import MIXING
    from table_length_cases import TABLE_LENGTHS
    from unplaced_view_cases import UNPLACED_VIEWS
    from unread_cases import UNREAD

    found: list[Source] = []
    made = (*ROWWISE, *MIXING, *UNREAD, *TABLE_LENGTHS, *COMPUTED_AXES, *UNPLACED_VIEWS, *SHIFTED_WINDOWS)
    for make in made:
        try:
            found.append(make())
        except Exception as err:
            print(f"size_count_cases: {make.__name__} failed: {type(err).__name__}: {err}", file=sys.stderr)
    names = [s.name for s in found]
    assert len(names) == len(set(names)), "duplicate names"
    return sorted(found, key=lambda s: s.name)


def count_cases(limit: int | None, only: Sequence[str]) -> list[Case | Skipped]:
    """build_cases over count_sources(), each output's shape put back as the source declares it
    (build_cases clears them for the server to infer)."""
    found = count_sources()
    written = {s.name: s.model for s in found}
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        built = build_cases(found, limit, only)
    return [as_written(c, written[c.name]) if isinstance(c, Case) else c for c in built]


def as_written(case: Case, source: onnx.ModelProto) -> Case:
    """The case with its graph outputs declared as in `source`."""
    model = copy.deepcopy(case.model)
    shapes = {o.name: o.type for o in source.graph.output}
    for out in model.graph.output:
        out.type.CopyFrom(shapes[out.name])
    return replace(case, model=model)


def check() -> int:
    """Each case with onnxruntime alone: a _rowwise one's merged run answers each row as alone, a
    _mixing one's does not. 1 if any is not so."""
    bad = 0
    for case in count_cases(None, ()):
        if isinstance(case, Skipped):
            print(f"SKIPPED {case.name}: {case.reason}")
            bad += 1
            continue
        fine = case.oracle_mixes == case.name.endswith("_mixing")
        bad += not fine
        shapes = [r.shape for r in case.requests[0].expected]
        print(
            f"{'ok ' if fine else 'BAD'} {case.name}: mixes={case.oracle_mixes} {case.oracle_detail} {shapes}"
        )
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(check())
