"""Counts-corpus cases (scripts/size_count_cases.py) of axes, bounds and sizes a graph computes from
shapes it knows (session 62; testers' over-refusals of session 61): original Swin's window_reverse,
B = int(windows.shape[0] / (H * W / ws / ws)) in float and as an int64 Div, then view(B, ...); a
LayerNorm whose axes are Size(Shape(x)) - 1; torch's opset-9 F.interpolate(size=...), its Upsample
scales cut from two Shapes by Slices of attributes. Each _rowwise one has its _mixing counterpart:
the B so taken back used as a value (x * B), the rank arithmetic landing on the batch's axis, an
attribute Slice keeping the batch's size used as a value. Session 63: a length an op computes from
the batch's (Shape(Tile(x, [2, 1]))[0], 2N) as a value, beside one it takes from another axis.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from row_mixing_cases import Source
from size_count_cases import F, Graph, f32

C, WS, H = 8, 2, 4  # Swin: channels, window, grid side (4 windows an image)


def _swin(name: str, floats: bool, b_as_value: bool) -> Source:
    g = Graph()
    grid = H // WS
    n1 = g.size1()
    x6 = g.op("Reshape", ["x", g.cat(n1, g.const([grid, WS, grid, WS, C]))])
    windows = g.op("Reshape", [g.op("Transpose", [x6], perm=[0, 1, 3, 2, 4, 5]), g.const([-1, WS, WS, C])])
    scaled = g.op("Mul", [windows, g.const(np.linspace(0.5, 1.5, C), np.float32)])
    count = g.size(scaled)
    if floats:  # int(windows.shape[0] / (H * W / ws / ws)) as torch exports it
        per_image = g.const((H * H) / WS / WS, np.float32)
        b = g.op("Cast", [g.op("Div", [g.op("Cast", [count], to=F), per_image])], to=7)
    else:
        b = g.op("Div", [count, g.const((H * H) // (WS * WS))])
    b1 = g.op("Unsqueeze", [b, g.const([0])])
    y6 = g.op("Reshape", [scaled, g.cat(b1, g.const([grid, grid, WS, WS, -1]))])
    y4 = g.op("Reshape", [g.op("Transpose", [y6], perm=[0, 1, 3, 2, 4, 5]), g.cat(b1, g.const([H, H, -1]))])
    y3 = g.op("Reshape", [y4, g.cat(n1, g.const([H * H, C]))])
    if b_as_value:
        y3 = g.op("Mul", [y3, g.op("Cast", [b], to=F)])
    g.op("Add", ["x", y3], out="y")
    m = g.model([("x", ["N", H * H, C])], [("y", ["N", H * H, C])])
    return Source(name, m, (f32(60, 4, H * H, C),))


def _layer_norm(name: str, less: int) -> Source:
    g = Graph()
    rank = g.op("Size", [g.op("Shape", ["x"])])
    axes = g.op("Unsqueeze", [g.op("Sub", [rank, g.const(less)]), g.const([0])])
    mu = g.op("ReduceMean", ["x", axes], keepdims=1)
    d = g.op("Sub", ["x", mu])
    var = g.op("ReduceMean", [g.op("Pow", [d, g.const(2.0, np.float32)]), axes], keepdims=1)
    sd = g.op("Sqrt", [g.op("Add", [var, g.const(1e-5, np.float32)])])
    g.op("Div", [d, sd], out="y")
    m = g.model([("x", ["N", 5, 8])], [("y", ["N", 5, 8])], opset=18)
    return Source(name, m, (f32(61, 4, 5, 8),))


def _upsample9() -> Source:
    g = Graph()
    low = g.op(
        "Conv", ["x", g.const(f32(62, 4, 4, 3, 3) * 0.3, np.float32)], strides=[2, 2], pads=[1, 1, 1, 1]
    )
    hx = g.op("Slice", [g.op("Shape", ["x"])], starts=[2], ends=[4], axes=[0])
    hl = g.op("Slice", [g.op("Shape", [low])], starts=[2], ends=[4], axes=[0])
    scales = g.op("Div", [g.op("Cast", [hx], to=F), g.op("Cast", [hl], to=F)])
    up = g.op("Upsample", [low, g.cat(g.const([1.0, 1.0], np.float32), scales)], mode="nearest")
    lateral = g.op("Conv", ["x", g.const(f32(63, 4, 4, 1, 1) * 0.3, np.float32)])
    g.op("Add", [up, lateral], out="y")
    m = g.model([("x", ["N", 4, 8, 8])], [("y", ["N", 4, 8, 8])], opset=9)
    return Source("count_upsample9_attribute_slices_rowwise", m, (f32(64, 4, 4, 8, 8),))


def _size_by_attribute_slice() -> Source:
    g = Graph()
    n = g.op("Slice", [g.op("Shape", ["x"])], starts=[0], ends=[1], axes=[0])
    g.op("Mul", ["x", g.op("Cast", [n], to=F)], out="y")
    m = g.model([("x", ["N", 3])], [("y", ["N", 3])], opset=9)
    return Source("count_attribute_slice_of_n_mixing", m, (f32(65, 4, 3),))


def _length_as_value(name: str, axis: int) -> Source:
    """x / Shape(Tile(x, [2, 2]))[axis]: 2N at axis 0 (mixing), 6 at axis 1 (rowwise)."""
    g = Graph()
    grown = g.op("Tile", ["x", g.const([2, 2])])
    g.op("Div", ["x", g.op("Cast", [g.size(grown, axis)], to=F)], out="y")
    m = g.model([("x", ["N", 3])], [("y", ["N", 3])])
    return Source(name, m, (f32(66, 4, 3),))


COMPUTED_AXES: tuple[Callable[[], Source], ...] = (
    lambda: _swin("count_swin_window_reverse_float_rowwise", True, False),
    lambda: _swin("count_swin_window_reverse_int_rowwise", False, False),
    lambda: _swin("count_swin_window_reverse_b_as_value_mixing", True, True),
    lambda: _layer_norm("count_layer_norm_rank_axes_rowwise", 1),
    lambda: _layer_norm("count_layer_norm_rank_axes_batch_mixing", 3),
    _upsample9,
    _size_by_attribute_slice,
    lambda: _length_as_value("count_tiled_rows_length_mixing", 0),
    lambda: _length_as_value("count_tiled_columns_length_rowwise", 1),
)
