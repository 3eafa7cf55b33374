"""Small constants made at load from a graph's constants (server/backends/onnx_constant_fold.py)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from server.backends.onnx_constant_fold import MAX_ELEMENTS, folded


def _i(*values: int) -> np.ndarray:
    return np.asarray(values, np.int64)


@pytest.mark.parametrize(
    ("node", "inputs", "want"),
    [
        (helper.make_node("Identity", ["a"], ["b"]), [_i(1, 2)], _i(1, 2)),
        (
            helper.make_node("Cast", ["a"], ["b"], to=TensorProto.INT32),
            [_i(1, 2)],
            np.asarray([1, 2], np.int32),
        ),
        (helper.make_node("Unsqueeze", ["a", "x"], ["b"]), [np.asarray(3, np.int64), _i(0)], _i(3)),
        (
            helper.make_node("Unsqueeze", ["a"], ["b"], axes=[-1]),
            [_i(1, 2)],
            np.asarray([[1], [2]], np.int64),
        ),
        (helper.make_node("Squeeze", ["a", "x"], ["b"]), [np.asarray([[4]], np.int64), _i(1)], _i(4)),
        (helper.make_node("Squeeze", ["a"], ["b"]), [np.asarray([[4]], np.int64)], np.asarray(4, np.int64)),
        (helper.make_node("Concat", ["a", "c"], ["b"], axis=0), [_i(1), _i(2, 3)], _i(1, 2, 3)),
        (
            helper.make_node("Reshape", ["a", "s"], ["b"]),
            [_i(1, 2, 3, 4), _i(2, 2)],
            np.asarray([[1, 2], [3, 4]]),
        ),
        (helper.make_node("Neg", ["a"], ["b"]), [_i(1, -2)], _i(-1, 2)),
        (helper.make_node("Add", ["a", "c"], ["b"]), [_i(1, 2), _i(3)], _i(4, 5)),
        (helper.make_node("Sub", ["a", "c"], ["b"]), [_i(1, 2), _i(3)], _i(-2, -1)),
        (helper.make_node("Mul", ["a", "c"], ["b"]), [_i(1, 2), _i(3)], _i(3, 6)),
        (helper.make_node("Gather", ["a", "i"], ["b"]), [_i(5, 6, 7), _i(2, 0)], _i(7, 5)),
        (
            helper.make_node("Gather", ["a", "i"], ["b"], axis=1),
            [np.asarray([[5, 6]]), _i(1)],
            np.asarray([[6]]),
        ),
        (
            helper.make_node("ConstantOfShape", ["s"], ["b"], value=numpy_helper.from_array(_i(7))),
            [_i(2)],
            _i(7, 7),
        ),
        (helper.make_node("ConstantOfShape", ["s"], ["b"]), [_i(2)], np.zeros(2, np.float32)),
        (helper.make_node("Slice", ["a", "s", "e"], ["b"]), [_i(1, 2, 3), _i(1), _i(3)], _i(2, 3)),
        (
            helper.make_node("Slice", ["a", "s", "e", "x", "p"], ["b"]),
            [_i(1, 2, 3, 4), _i(-1), _i(-(2**63) + 1), _i(0), _i(-2)],
            _i(4, 2),
        ),
        (helper.make_node("Transpose", ["a"], ["b"]), [np.asarray([[1, 2]])], np.asarray([[1], [2]])),
        (
            helper.make_node("Transpose", ["a"], ["b"], perm=[1, 0]),
            [np.asarray([[1, 2]])],
            np.asarray([[1], [2]]),
        ),
    ],
)
def test_each_op_folds_as_onnx_computes_it(node: object, inputs: list[np.ndarray], want: np.ndarray) -> None:
    got = folded(node, inputs)  # type: ignore[arg-type]
    assert got is not None and got.dtype == want.dtype and np.array_equal(got, want), (got, want)


def test_what_is_not_known_or_too_large_is_none() -> None:
    add = helper.make_node("Add", ["a", "c"], ["b"])
    assert folded(add, [_i(1), None]) is None  # an input computed at run time
    assert folded(helper.make_node("RandomUniformLike", ["a"], ["b"]), [_i(1)]) is None  # not an op folded
    assert folded(add, []) is None
    big = np.zeros(MAX_ELEMENTS + 1, np.int64)
    assert folded(add, [big, _i(1)]) is None
    assert folded(add, [np.zeros(MAX_ELEMENTS, np.int64), _i(1)]) is not None  # the most folded
    tiled = helper.make_node("ConstantOfShape", ["s"], ["b"])
    assert folded(tiled, [_i(MAX_ELEMENTS + 1)]) is None  # what it makes is too large
    assert folded(helper.make_node("Reshape", ["a", "s"], ["b"]), [_i(1, 2, 3), _i(2, 2)]) is None  # refused
    assert folded(helper.make_node("Unsqueeze", ["a"], ["b"]), [_i(1)]) is None  # axes not known
