"""Small constants computed at load by onnx's reference implementation
(server/backends/onnx_reference_fold.py): as the graph's opset defines the op, never an output
larger than the limit made, and "not known" for anything else. Session 66."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from server.backends.onnx_constant_fold import MAX_ELEMENTS, folded
from server.backends.onnx_reference_fold import REFERENCE_OPS, reference_folded


def _i(*values: int) -> np.ndarray:
    return np.asarray(values, np.int64)


def test_an_op_is_run_as_its_graphs_opset_defines_it() -> None:
    """A ReduceSum's axes: an attribute before opset 13, an input from 13 on."""
    by_attribute = helper.make_node("ReduceSum", ["a"], ["b"], axes=[1], keepdims=0)
    by_input = helper.make_node("ReduceSum", ["a", "axes"], ["b"], keepdims=0)
    table = np.arange(6, dtype=np.int64).reshape(2, 3)
    assert reference_folded(by_attribute, [table], 11, MAX_ELEMENTS).tolist() == [3, 12]  # type: ignore[union-attr]
    assert reference_folded(by_input, [table, _i(1)], 13, MAX_ELEMENTS).tolist() == [3, 12]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("op", "inputs", "attrs", "want"),
    [
        ("Abs", [np.array([-3.0], np.float32)], {}, [3.0]),
        ("Div", [_i(-7), _i(2)], {}, [-3]),  # integer division truncates, as onnxruntime's
        ("Mod", [_i(-7), _i(2)], {"fmod": 1}, [-1]),
        ("Max", [_i(2, 9), _i(5)], {}, [5, 9]),
        ("Range", [np.array(0), np.array(4), np.array(2)], {}, [0, 2]),
        ("Tile", [_i(1, 2), _i(2)], {}, [1, 2, 1, 2]),
        ("ReduceProd", [_i(3, 4)], {"keepdims": 0}, 12),
    ],
)
def test_ops_of_the_list_are_computed(
    op: str, inputs: list[np.ndarray], attrs: dict[str, int], want: object
) -> None:
    made = folded(
        helper.make_node(op, [f"in{i}" for i in range(len(inputs))], ["out"], **attrs), inputs, opset=17
    )
    assert made is not None and made.tolist() == want


def test_an_optional_input_left_out_is_its_default() -> None:
    clip = helper.make_node("Clip", ["a", "", "top"], ["b"])
    assert reference_folded(clip, [_i(-7, 9), None, np.array(3, np.int64)], 17, MAX_ELEMENTS).tolist() == [
        -7,
        3,
    ]  # type: ignore[union-attr]
    assert (
        reference_folded(helper.make_node("Clip", ["a", "low"], ["b"]), [_i(1), None], 17, MAX_ELEMENTS)
        is None
    )


@pytest.mark.parametrize(
    ("op", "inputs"),
    [
        ("Range", [np.array(0), np.array(10**12), np.array(1)]),  # never made: 1e12 values
        ("Range", [np.array(0), np.array(5), np.array(0)]),  # no step
        ("Tile", [_i(1, 2), _i(10**9)]),
        ("Tile", [_i(1, 2), _i(-1)]),
        ("Expand", [_i(1, 2), _i(10**6, 2)]),
        ("Expand", [_i(1, 2), _i(3, 3)]),  # shapes that do not broadcast
        ("Abs", [np.zeros(MAX_ELEMENTS + 1, np.int64)]),  # an input over the limit
        (
            "Sum",
            [np.zeros((MAX_ELEMENTS, 1), np.int64), np.zeros(MAX_ELEMENTS, np.int64)],
        ),  # an output over it
    ],
)
def test_nothing_over_the_limit_is_made(op: str, inputs: list[np.ndarray]) -> None:
    node = helper.make_node(op, [f"in{i}" for i in range(len(inputs))], ["out"])
    assert reference_folded(node, inputs, 17, MAX_ELEMENTS) is None


def test_ops_not_listed_and_failures_are_not_known() -> None:
    for op in ("RandomUniformLike", "Sigmoid", "If", "Shape"):
        assert op not in REFERENCE_OPS
        assert reference_folded(helper.make_node(op, ["a"], ["b"]), [_i(1)], 17, MAX_ELEMENTS) is None
    matmul = helper.make_node("MatMul", ["a", "b"], ["c"])
    assert reference_folded(matmul, [_i(1, 2, 3), _i(1, 2)], 17, MAX_ELEMENTS) is None  # 3 by 2: refused
    assert reference_folded(helper.make_node("Abs", ["a"], ["b"]), [None], 17, MAX_ELEMENTS) is None
    assert reference_folded(helper.make_node("Abs", ["a"], ["b"]), [], 17, MAX_ELEMENTS) is None
