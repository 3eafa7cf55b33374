"""Cases of the counts corpus (scripts/size_count_cases.py): a table t = Range(0, L)[:, None] as
long as a length of x's other axis read off an op's output, added to x against the batch's axis,
then (x + t)[:N] (a tester, session 59: such forms loaded batched at 23610a4, a batch of four
giving request i the table's row i, alone its row 0, status OK). L is read off a Gather of x by
Range(0, T), a OneHot of depth T, a Compress by a constant condition, a MaxPool, a Flatten: dims
onnx makes up that the load now traces to x's other axes (server/backends/onnx_told_dims.py,
session 60). At 7abb6dd the OneHot, Compress and MaxPool ones here loaded batched (the Gather and
Flatten ones were refused; their forms in tests/unit/test_onnx_table_lengths_ops.py were not). A
second tester, session 60: L read off a Reshape with -1 or a SplitToSequence's count loaded batched
at 05301ef too. Session 61: L off an STFT's frames or a Squeeze at computed axes (no dims in onnx's
inference): their tables batched wrong, OK, at 3a1cb79 in a tester's forms
(tests/unit/test_onnx_untold_lengths.py); here the Slice by the batch's size was refused already.
The _rowwise kin add the same table across each row and must still batch.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto as T
from row_mixing_cases import Source
from size_count_cases import F, Graph, f32


def _by_range(g: Graph) -> str:
    idx = g.op("Range", [g.const(0), g.size(axis=1), g.const(1)])
    return g.size(g.op("Gather", ["x", idx], axis=1), 1)


def _one_hot(g: Graph) -> str:
    depth = g.size1(axis=1)
    return g.size(g.op("OneHot", [g.op("Cast", ["x"], to=T.INT64), depth, g.const([0, 1], np.float32)]), 2)


def _compress(g: Graph) -> str:
    return g.size(g.op("Compress", ["x", g.const(np.ones(4, bool), np.bool_)], axis=1), 1)


def _pooled(g: Graph) -> str:
    return g.size(g.op("MaxPool", [g.op("Unsqueeze", ["x", g.const([1])])], kernel_shape=[1]), 2)


def _flat(g: Graph) -> str:
    return g.size(g.op("Flatten", [g.op("Unsqueeze", ["x", g.const([1])])], axis=1), 1)


def _reshaped(g: Graph) -> str:  # x.view(N, 2, -1).shape[2] * 2 (session 60)
    return g.op("Mul", [g.size(g.op("Reshape", ["x", g.const([0, 2, -1])]), 2), g.const(2)])


def _sequence_length(g: Graph) -> str:  # len(x.split(1, dim=1)) as a sequence (session 60)
    return g.op("SequenceLength", [g.op("SplitToSequence", ["x"], axis=1, keepdims=0)])


def _stft_frames(g: Graph) -> str:  # an STFT of step 1 and length 1: as many frames as columns (s61)
    signal = g.op("Unsqueeze", ["x", g.const([2])])
    return g.size(g.op("STFT", [signal, g.const(1), "", g.const(1)]), 1)


def _squeezed(g: Graph) -> str:  # x[:, None] squeezed at axis N / N, computed (session 61)
    at = g.op("Div", [g.size1(), g.size1()])
    return g.size(g.op("Squeeze", [g.op("Unsqueeze", ["x", g.const([1])]), at]), 1)


LENGTHS: dict[str, Callable[[Graph], str]] = {  # L: a scalar, 4 for the 4 columns sent
    "gather_by_range": _by_range,
    "one_hot": _one_hot,
    "compress": _compress,
    "max_pool": _pooled,
    "flatten": _flat,
    "reshape_minus_one": _reshaped,
    "sequence_length": _sequence_length,
    "stft_frames": _stft_frames,
    "squeeze_computed": _squeezed,
}


def _model(length: str, across: bool, seed: int) -> Source:
    g = Graph()
    rows = g.op("Range", [g.const(0), LENGTHS[length](g), g.const(1)])
    table = g.op("Unsqueeze", [g.op("Cast", [rows], to=F), g.const([1])])
    if across:  # t [1, L] across each row's values: rows kept
        g.op("Add", ["x", g.op("Transpose", [table], perm=[1, 0])], out="y")
    else:
        g.op("Slice", [g.op("Add", ["x", table]), g.const([0]), g.size1(), g.const([0])], out="y")
    m: onnx.ModelProto = g.model([("x", ["N", "T"])], [("y", ["N", "T"])], opset=17)
    kind = "rowwise" if across else "mixing"
    return Source(f"count_table_by_{length}_{kind}", m, (np.abs(f32(seed, 4, 4)).round(),))


def _maker(length: str, across: bool, seed: int) -> Callable[[], Source]:
    def make() -> Source:
        return _model(length, across, seed)

    make.__name__ = f"table_by_{length}_{'across' if across else 'spread'}"
    return make


TABLE_LENGTHS = tuple(
    _maker(length, across, seed)
    for seed, (length, across) in enumerate(((n, a) for n in LENGTHS for a in (False, True)), start=93)
)
