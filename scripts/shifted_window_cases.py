"""Cases of the counts corpus (scripts/size_count_cases.py): HF transformers' Swin block with a
shifted window, as torch's legacy exporter writes it at a fixed image size (session 67, read off a
real export of transformers 5): tokens [N, 64, C] viewed as an 8 x 8 grid, padded to a multiple of
the window by (ws - H % ws) % ws, rolled by two Slices and a Concat on each axis, partitioned into
windows by H // ws, attended with the shifted windows' mask, which is expanded by (N * nW) // nW,
one copy per image, and put back by window_reverse.

onnx's inference loses every length at the Pad (its pads are computed), so the load could not tell
that the mask's copies are one per image: refused for dynamic batching, each image its own. The
load now computes the arithmetic on the lengths the model fixes (server/backends/
onnx_fixed_lengths.py). The _mixing kin puts the windows back with the batch's axis
and H // ws's swapped: rows of two requests are interleaved, and it must stay refused.
"""

from __future__ import annotations

import numpy as np
from row_mixing_cases import Source
from size_count_cases import Graph, f32

C, SIDE, WS, SHIFT = 4, 8, 4, 2  # channels, grid side, window, shift


def _padded(g: Graph, grid: str) -> str:
    """maybe_pad: pads of (ws - H % ws) % ws below and right, computed from the grid's shape."""
    ws = g.const(WS)
    extra = [g.op("Mod", [g.op("Sub", [ws, g.op("Mod", [g.size(grid, a), ws])]), ws]) for a in (1, 2)]
    ends = [g.op("Unsqueeze", [e, g.const([0])]) for e in extra]
    zeros = g.const([0, 0, 0, 0, 0])
    return g.op("Pad", [grid, g.cat(zeros, *ends, g.const([0]))])


def _rolled(g: Graph, x: str, by: int) -> str:
    """torch.roll(x, (-by, -by), (1, 2)) as the legacy exporter writes it."""
    for axis in (1, 2):
        axes, top = g.const([axis]), g.const([1 << 62])
        tail = g.op("Slice", [x, g.const([by]), top, axes])
        head = g.op("Slice", [x, g.const([0]), g.const([by]), axes])
        x = g.cat(tail, head, axis=axis)
    return x


def _windows(g: Graph, x: str, batch: str, channels: str) -> tuple[str, str, str]:
    """window_partition: [B, H // ws, ws, W // ws, ws, C] -> [B * nW, ws * ws, C]; H // ws and W // ws."""
    ws = g.const([WS])
    hq, wq = (g.op("Unsqueeze", [g.op("Div", [g.size(x, a), g.const(WS)]), g.const([0])]) for a in (1, 2))
    parts = g.op("Reshape", [x, g.cat(batch, hq, ws, wq, ws, channels)])
    parts = g.op("Transpose", [parts], perm=[0, 1, 3, 2, 4, 5])
    return g.op("Reshape", [parts, g.cat(g.const([-1, WS * WS]), channels)]), hq, wq


def _mask(g: Graph, padded: str) -> str:
    """The shifted windows' mask [nW, ws*ws, ws*ws] from the padded grid's size, as HF builds it:
    region ids from Ranges of H and W, partitioned like the data, compared pairwise."""
    regions = []
    for axis in (1, 2):
        length = g.size(padded, axis)
        steps = g.op("Range", [g.const(0), length, g.const(1)])
        edges = [g.op("Sub", [length, g.const(back)]) for back in (WS, SHIFT)]  # slices -ws, -shift
        marks = [g.op("Cast", [g.op("GreaterOrEqual", [steps, edge])], to=7) for edge in edges]
        regions.append(g.op("Add", marks))
    rows = g.op("Unsqueeze", [g.op("Mul", [regions[0], g.const(3)]), g.const([0, 2, 3])])
    ids = g.op("Cast", [g.op("Add", [rows, g.op("Unsqueeze", [regions[1], g.const([0, 1, 3])])])], to=1)
    one = g.const([1])
    win, _, _ = _windows(g, ids, one, one)
    flat = g.op("Reshape", [win, g.const([-1, WS * WS])])
    diff = g.op("Sub", [g.op("Unsqueeze", [flat, g.const([1])]), g.op("Unsqueeze", [flat, g.const([2])])])
    zero = g.const(0.0, np.float32)
    return g.op("Where", [g.op("Equal", [diff, zero]), zero, g.const(-100.0, np.float32)])


def shifted_window_block(g: Graph, swapped: bool = False, grid_input: bool = False) -> None:
    """x [N, SIDE * SIDE, C] -> y of the same shape (see the module's text); `swapped`: the windows
    put back with the batch's axis and H // ws's swapped, window_reverse's permute gone wrong;
    `grid_input`: x an image [N, H, W, C] of any size (optimum's dynamic axes), y as long."""
    batch, channels = g.size1("x", 0), g.size1("x", 3 if grid_input else 2)
    grid = "x" if grid_input else g.op("Reshape", ["x", g.cat(batch, g.const([SIDE, SIDE]), channels)])
    padded = _padded(g, grid)
    rolled = _rolled(g, padded, SHIFT)
    win, hq, wq = _windows(g, rolled, g.size1(rolled, 0), g.size1(rolled, 3))
    scores = g.op("MatMul", [win, g.op("Transpose", [win], perm=[0, 2, 1])])  # [N*nW, 16, 16]
    mask = _mask(g, padded)
    per_image = g.op("Div", [g.size(scores, 0), g.size(mask, 0)])  # (N * nW) // nW
    copies = g.cat(g.op("Unsqueeze", [per_image, g.const([0])]), g.const([1, 1, 1, 1]))
    expanded = g.op("Expand", [g.op("Unsqueeze", [mask, g.const([0, 2])]), copies])
    masks = g.op("Reshape", [expanded, g.const([-1, 1, WS * WS, WS * WS])])
    heads = g.op("Add", [g.op("Unsqueeze", [scores, g.const([1])]), masks])
    weights = g.op("Reshape", [g.op("Softmax", [heads], axis=-1), g.const([-1, WS * WS, WS * WS])])
    attended = g.op("MatMul", [weights, win])
    ws = g.const([WS])
    parts = g.op("Reshape", [attended, g.cat(g.const([-1]), hq, wq, ws, ws, channels)])
    parts = g.op("Transpose", [parts], perm=[1, 0, 3, 2, 4, 5] if swapped else [0, 1, 3, 2, 4, 5])
    sides = (g.size1(rolled, 1), g.size1(rolled, 2))
    grid_back = g.op("Reshape", [parts, g.cat(g.const([-1]), *sides, channels)])
    if grid_input:
        g.op("Identity", [grid_back], out="y")
    else:
        g.op("Reshape", [grid_back, g.cat(batch, g.const([-1]), channels)], out="y")


def shifted_windows_rowwise() -> Source:
    g = Graph()
    shifted_window_block(g)
    m = g.model([("x", ["N", SIDE * SIDE, C])], [("y", ["N", SIDE * SIDE, C])])
    return Source("count_shifted_windows_rowwise", m, (f32(141, 4, SIDE * SIDE, C),))


def shifted_windows_reverse_swapped_mixing() -> Source:
    g = Graph()
    shifted_window_block(g, swapped=True)
    m = g.model([("x", ["N", SIDE * SIDE, C])], [("y", ["N", SIDE * SIDE, C])])
    return Source("count_shifted_windows_reverse_swapped_mixing", m, (f32(142, 4, SIDE * SIDE, C),))


def shifted_windows_any_size_rowwise() -> Source:
    """The block of an image of any size, sent 8 x 12 (refused at 7e46334)."""
    g = Graph()
    shifted_window_block(g, grid_input=True)
    m = g.model([("x", ["N", "H", "W", C])], [("y", ["N", "H", "W", C])])
    return Source("count_shifted_windows_any_size_rowwise", m, (f32(143, 4, SIDE, 12, C),))


def shifted_windows_any_size_swapped_mixing() -> Source:
    g = Graph()
    shifted_window_block(g, swapped=True, grid_input=True)
    m = g.model([("x", ["N", "H", "W", C])], [("y", ["N", "H", "W", C])])
    return Source("count_shifted_windows_any_size_swapped_mixing", m, (f32(144, 4, SIDE, 12, C),))


SHIFTED_WINDOWS = (
    shifted_windows_rowwise,
    shifted_windows_reverse_swapped_mixing,
    shifted_windows_any_size_rowwise,
    shifted_windows_any_size_swapped_mixing,
)
