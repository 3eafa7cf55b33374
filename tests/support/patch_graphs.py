"""HF transformers' MobileViT block, as torch's legacy exporter writes it, small and by hand (its real
export with a dynamic image size, read in session 68, is the model this follows): x [N, C, H, W]
unfolded into patches [N * P, num_patches, C] by reshapes whose first entries are N * C * nh and
N * P, nh = int(ceil(H / 2) * 2) // 2 computed in floats; attended over the patches; folded back
to [N, C, H, W] by N read from x's shape; and joined to x along the channels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from tests.support.onnx_graphs import F, graph_model, ints, node
from tests.support.window_graphs import size

C, PATCH = 3, 2  # channels, the patch's side (P = PATCH * PATCH)
AREA = PATCH * PATCH
I64 = onnx.TensorProto.INT64


def patches(axis: int, out: str) -> list[onnx.NodeProto]:
    """x's length along `axis` over the patch's side, as MobileViT computes it: a [1] tensor `out`."""
    return [
        node("Shape", ["x"], f"{out}_s"),
        node("Gather", [f"{out}_s", f"at{axis}"], f"{out}_l", axis=0),
        node("Cast", [f"{out}_l"], f"{out}_f", to=F),
        node("Div", [f"{out}_f", "side_f"], f"{out}_d"),
        node("Ceil", [f"{out}_d"], f"{out}_c"),
        node("Mul", [f"{out}_c", "side_f"], f"{out}_m"),
        node("Cast", [f"{out}_m"], f"{out}_i", to=I64),
        node("Div", [f"{out}_i", "side"], f"{out}_q"),
        node("Cast", [f"{out}_q"], f"{out}_0", to=I64),
        node("Unsqueeze", [f"{out}_0", "zero1"], out),
    ]


def patch_block(fold: str = "bp", shape: Sequence[int | str] = ("N", C, "H", "W")) -> onnx.ModelProto:
    """The unfolded patches attended and folded back; `fold`: 'bp' splits the patches' first axis
    N * P as (N, P), as MobileViT does; 'pb' as (P, N), which moves rows between images."""
    unfold = [
        *size("x", 0, "n"),
        *patches(2, "nh"),
        *patches(3, "nw"),
        node("Mul", ["n", "c1"], "nc"),
        node("Mul", ["nc", "nh"], "nch"),
        node("Mul", ["nh", "nw"], "np"),
        node("Mul", ["n", "area1"], "nP"),
        node("Concat", ["nch", "side1", "nw", "side1"], "s0", axis=0),
        node("Reshape", ["x", "s0"], "r0"),  # [N * C * nh, 2, nw, 2]
        node("Transpose", ["r0"], "t0", perm=[0, 2, 1, 3]),
        node("Concat", ["n", "c1", "np", "area1"], "s1", axis=0),
        node("Reshape", ["t0", "s1"], "r1"),  # [N, C, np, P]
        node("Transpose", ["r1"], "t1", perm=[0, 3, 2, 1]),
        node("Concat", ["nP", "np", "minus1"], "s2", axis=0),
        node("Reshape", ["t1", "s2"], "u"),  # [N * P, np, C]
    ]
    attend = [
        node("Mul", ["u", "scale"], "un"),  # (a LayerNorm's scale: onnxruntime checks the unfolding)
        *size("un", 0, "bp"),
        *size("un", 1, "tokens"),
        node("Concat", ["bp", "tokens", "minus1"], "heads", axis=0),
        node("Reshape", ["un", "heads"], "q"),  # view(B * P, np, -1): the attention's own shape
        node("Transpose", ["q"], "k", perm=[0, 2, 1]),
        node("MatMul", ["q", "k"], "scores"),
        node("Softmax", ["scores"], "weights", axis=-1),
        node("MatMul", ["weights", "q"], "att"),
    ]
    lead = ["n", "area1"] if fold == "bp" else ["area1", "n"]
    back = [
        node("Concat", [*lead, "np", "minus1"], "s3", axis=0),
        node("Reshape", ["att", "s3"], "r3"),  # [N, P, np, C] (or [P, N, np, C])
        node("Transpose", ["r3"], "t3", perm=[0, 3, 2, 1] if fold == "bp" else [1, 3, 2, 0]),
        node("Concat", ["nch", "nw", "side1", "side1"], "s4", axis=0),
        node("Reshape", ["t3", "s4"], "r4"),  # [N * C * nh, nw, 2, 2]
        node("Transpose", ["r4"], "t4", perm=[0, 2, 1, 3]),
        node("Mul", ["nh", "side1"], "h2"),
        node("Mul", ["nw", "side1"], "w2"),
        node("Concat", ["n", "c1", "h2", "w2"], "s5", axis=0),
        node("Reshape", ["t4", "s5"], "folded"),  # [N, C, H, W]
        node("Concat", ["x", "folded"], "y", axis=1),
    ]
    inits = [
        *(ints(f"at{a}", a) for a in range(4)),
        ints("zero1", [0]),
        ints("side", PATCH),
        ints("side1", [PATCH]),
        ints("area1", [AREA]),
        ints("c1", [C]),
        ints("minus1", [-1]),
        numpy_helper.from_array(np.asarray(float(PATCH), np.float32), "side_f"),
        numpy_helper.from_array(np.asarray(0.5, np.float32), "scale"),
    ]
    return graph_model([*unfold, *attend, *back], inits, shape=shape)


def led_by(
    first: Sequence[onnx.NodeProto],
    axis: int = -1,
    others: Sequence[str] = ("minus1",),
    shape: Sequence[int | str] = ("N", 8),
    source: Sequence[onnx.NodeProto] = (),
) -> onnx.ModelProto:
    """x (or 'data', made by the nodes `source`) viewed as [first, *others] ('first' a [1] tensor
    the nodes `first` make of 'n', x's batch's size), a Softmax along `axis`, viewed back as [N, -1]."""
    data = "data" if source else "x"
    nodes = [
        *size("x", 0, "n"),
        *source,
        *first,
        node("Concat", ["first", *others], "lead", axis=0),
        node("Reshape", [data, "lead"], "v"),
        node("Softmax", ["v"], "w", axis=axis),
        node("Concat", ["n", "minus1"], "back", axis=0),
        node("Reshape", ["w", "back"], "y"),
    ]
    inits = [
        *(ints(f"at{a}", a) for a in range(4)),
        ints("zero1", [0]),
        ints("two1", [2]),
        ints("four1", [4]),
        ints("minus1", [-1]),
        ints("one", 1),
        numpy_helper.from_array(np.asarray(1.5, np.float32), "three_halves"),
        numpy_helper.from_array(np.asarray(0.5, np.float32), "half"),
    ]
    return graph_model(nodes, inits, shape=shape)
