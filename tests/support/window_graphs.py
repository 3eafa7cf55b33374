"""HF transformers' Swin block with a shifted window, as torch's legacy exporter writes it, small and
by hand (its real export, read in session 67, is the model these follow): x [N, H, W, C] padded to
a multiple of the window by computed pads, rolled by two Slices and a Concat, partitioned into
windows by H // ws, attended with a mask made from the padded grid's lengths and expanded by
(N * nW) // nW, one copy per image, and put back by window_reverse."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from tests.support.onnx_graphs import F, graph_model, ints, node

C, WS = 3, 4  # channels, window


def size(source: str, axis: int, out: str) -> list[onnx.NodeProto]:
    """Shape(source)[axis] as a [1] tensor `out`."""
    return [
        node("Shape", [source], f"{out}_s"),
        node("Gather", [f"{out}_s", f"at{axis}"], f"{out}_g", axis=0),
        node("Unsqueeze", [f"{out}_g", "zero1"], out),
    ]


def _quarter(source: str, axis: int, out: str) -> list[onnx.NodeProto]:
    """Shape(source)[axis] // ws as a [1] tensor `out`."""
    return [*size(source, axis, f"{out}_l"), node("Div", [f"{out}_l", "ws1"], out)]


def padding() -> list[onnx.NodeProto]:
    """x [N, H, W, C] padded below and right by (ws - H % ws) % ws, computed from its shape: 'p'."""
    nodes = []
    for axis in (1, 2):
        nodes += [
            *size("x", axis, f"l{axis}"),
            node("Mod", [f"l{axis}", "ws1"], f"r{axis}", fmod=0),
            node("Sub", ["ws1", f"r{axis}"], f"d{axis}"),
            node("Mod", [f"d{axis}", "ws1"], f"e{axis}", fmod=0),
        ]
    return [
        *nodes,
        node("Concat", ["zeros5", "e1", "e2", "zero1"], "pads", axis=0),
        node("Pad", ["x", "pads"], "p"),
    ]


def _partition(source: str, out: str, batch: str, channels: str) -> list[onnx.NodeProto]:
    """window_partition of `source` [B, H, W, C] by its own shape's H // ws and W // ws: `out`
    [B * nW, ws * ws, C]."""
    return [
        *_quarter(source, 1, f"{out}_hq"),
        *_quarter(source, 2, f"{out}_wq"),
        node("Concat", [batch, f"{out}_hq", "ws1", f"{out}_wq", "ws1", channels], f"{out}_parts", axis=0),
        node("Reshape", [source, f"{out}_parts"], f"{out}_v"),
        node("Transpose", [f"{out}_v"], f"{out}_vt", perm=[0, 1, 3, 2, 4, 5]),
        node("Concat", ["minus1", "square1", channels], f"{out}_flat", axis=0),
        node("Reshape", [f"{out}_vt", f"{out}_flat"], out),
    ]


def _mask() -> list[onnx.NodeProto]:
    """The shifted windows' mask [nW, 16, 16] from the padded grid's lengths, as HF makes it: a
    region id per row of the grid (a Range of its H), partitioned as the data is, compared pairwise."""
    return [
        *size("p", 1, "hp"),
        *size("p", 2, "wp"),
        node("Squeeze", ["hp", "zero1"], "hp0"),
        node("Range", ["zero", "hp0", "one"], "rows"),
        node("Sub", ["hp0", "shift"], "hp_less"),
        node("GreaterOrEqual", ["rows", "hp_less"], "lower"),
        node("Cast", ["lower"], "region", to=F),
        node("Unsqueeze", ["region", "at023"], "region4"),
        node("Concat", ["one1", "hp", "wp", "one1"], "grid", axis=0),
        node("Expand", ["region4", "grid"], "image"),
        *_partition("image", "mask_windows", "one1", "one1"),
        node("Reshape", ["mask_windows", "flat16"], "ids"),
        node("Unsqueeze", ["ids", "at1_1"], "ids_a"),
        node("Unsqueeze", ["ids", "at2_1"], "ids_b"),
        node("Sub", ["ids_a", "ids_b"], "apart"),
        node("Equal", ["apart", "zero_f"], "alike"),
        node("Where", ["alike", "zero_f", "minus100"], "mask"),
    ]


def window_block(
    first: str = "per", shape: Sequence[int | str] = ("N", 8, 8, C), back: tuple[str, str] = ("rh", "rw")
) -> onnx.ModelProto:
    """The padded grid rolled by 2 and partitioned into windows [N*nW, 16, C], the mask [nW, 16, 16]
    expanded by `first` ('per': (N*nW) // nW, the mask's copies per image; 'n_of': a fixed 2) to
    [N, nW, 1, 16, 16] and added to the windows' scores, attended, and put back as [N, H, W, C]
    by `back`'s H // ws and W // ws ('rh', 'rw'; ('rh', 'rh') views a wide image's windows wrong)."""
    nodes = [
        *padding(),
        node("Slice", ["p", "two1", "end1", "at1_1"], "tail"),  # torch.roll(p, -2, 1)
        node("Slice", ["p", "zero1", "two1", "at1_1"], "head"),
        node("Concat", ["tail", "head"], "q", axis=1),
        *size("q", 0, "b"),
        *size("q", 3, "c"),
        *_partition("q", "win", "b", "c"),
        node("Transpose", ["win"], "wint", perm=[0, 2, 1]),
        node("MatMul", ["win", "wint"], "scores"),
        *_mask(),
        *size("win", 0, "nw"),
        *size("mask", 0, "masks_n"),
        node("Div", ["nw", "masks_n"], "per"),
        node("Concat", [first, "ones4"], "copies", axis=0),
        node("Unsqueeze", ["mask", "at02"], "m5"),
        node("Expand", ["m5", "copies"], "me"),
        node("Reshape", ["me", "squares"], "masks"),
        node("Add", ["scores", "masks"], "masked"),
        node("Softmax", ["masked"], "weights", axis=-1),
        node("MatMul", ["weights", "win"], "att"),
        *_quarter("p", 1, "rh"),  # window_reverse's H // ws: of the grid before the roll
        *_quarter("p", 2, "rw"),
        node("Concat", ["minus1", *back, "ws1", "ws1", "c"], "back", axis=0),
        node("Reshape", ["att", "back"], "r"),
        node("Transpose", ["r"], "rt", perm=[0, 1, 3, 2, 4, 5]),
        node("Concat", ["minus1", "hp", "wp", "c"], "grid_back", axis=0),
        node("Reshape", ["rt", "grid_back"], "y"),
    ]
    inits = [
        *(ints(f"at{a}", a) for a in range(4)),
        ints("zero", 0),
        ints("one", 1),
        ints("shift", 2),
        ints("zero1", [0]),
        ints("one1", [1]),
        ints("two1", [2]),
        ints("ws1", [WS]),
        ints("square1", [WS * WS]),
        ints("zeros5", [0] * 5),
        ints("ones4", [1, 1, 1, 1]),
        ints("at02", [0, 2]),
        ints("at023", [0, 2, 3]),
        ints("at1_1", [1]),
        ints("at2_1", [2]),
        ints("flat16", [-1, WS * WS]),
        ints("squares", [-1, WS * WS, WS * WS]),
        ints("minus1", [-1]),
        ints("end1", [1 << 62]),
        ints("n_of", [2]),
        numpy_helper.from_array(np.zeros((), np.float32), "zero_f"),
        numpy_helper.from_array(np.full((), -100.0, np.float32), "minus100"),
    ]
    return graph_model(nodes, inits, shape=shape)
