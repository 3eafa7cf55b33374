"""Cases of the counts corpus (scripts/size_count_cases.py): x [N, 4, 3] viewed as [-1, k], a
Softmax along an axis of the view, viewed back as x's shape (a tester, session 65: such a view with
k = Cast(Abs(3.0)) loaded batched, "no proof" since session 51). k = 3 folds the batch into the
view's first axis, so a Softmax along it mixes requests. The load now computes k by onnx's reference
implementation (server/backends/onnx_reference_fold.py), and refuses a view whose k it cannot
compute (a Sigmoid's, onnx_unplaced_reshapes.py). The _rowwise kin's Softmax is along the view's
last axis, each row's own, and must still batch.
"""

from __future__ import annotations

import numpy as np
from row_mixing_cases import Source
from size_count_cases import Graph, f32


def _view(g: Graph, k: str, axis: int) -> None:
    view = g.op("Reshape", ["x", g.cat(g.const([-1]), g.op("Cast", [k], to=7))])
    g.op("Reshape", [g.op("Softmax", [view], axis=axis), g.op("Shape", ["x"])], out="y")


def _abs_three() -> tuple[Graph, str]:
    g = Graph()
    return g, g.op("Abs", [g.const([-3.0], np.float32)])


def view_abs_fold_softmax_mixing() -> Source:
    g, k = _abs_three()
    _view(g, k, axis=0)
    m = g.model([("x", ["N", 4, 3])], [("y", ["N", 4, 3])])
    return Source("count_view_abs_fold_softmax_mixing", m, (f32(131, 4, 4, 3),))


def view_abs_fold_softmax_rowwise() -> Source:
    g, k = _abs_three()
    _view(g, k, axis=1)
    m = g.model([("x", ["N", 4, 3])], [("y", ["N", 4, 3])])
    return Source("count_view_abs_fold_softmax_rowwise", m, (f32(132, 4, 4, 3),))


def view_sigmoid_length_softmax_mixing() -> Source:
    """k = Round(Sigmoid(0) * 6): 3 at run time, not computed at load."""
    g = Graph()
    half = g.op("Sigmoid", [g.const([0.0], np.float32)])
    k = g.op("Round", [g.op("Mul", [half, g.const([6.0], np.float32)])])
    _view(g, k, axis=0)
    m = g.model([("x", ["N", 4, 3])], [("y", ["N", 4, 3])])
    return Source("count_view_sigmoid_length_softmax_mixing", m, (f32(133, 4, 4, 3),))


UNPLACED_VIEWS = (
    view_abs_fold_softmax_mixing,
    view_abs_fold_softmax_rowwise,
    view_sigmoid_length_softmax_mixing,
)
