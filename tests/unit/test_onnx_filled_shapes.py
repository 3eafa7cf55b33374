"""The dims an op's form gives its outputs where onnx's inference gave none
(server/backends/onnx_filled_shapes.py), at the edges the session-58 mutation run found untested:
default axes, attribute-form Slice bounds (before opset 10), steps, negative axes at the rank's
bound, outputs past the first, an STFT, a broadcast of ones."""

from __future__ import annotations

import numpy as np
from onnx import helper

from server.backends.onnx_filled_shapes import filled_dims

N = helper.make_node
DIMS = {"x": ["N", 3, 8], "y": ["N", 3, 8], "one": [1, 1, 1], "sig": ["N", 100, 1], "s": ["N", 8]}


def _none(index: int) -> None:
    return None


def test_split_and_concat_default_to_axis_0_and_fill_every_output() -> None:
    assert filled_dims(N("Split", ["x"], ["a", "b"]), DIMS.get, _none) == [[None, 3, 8]] * 2
    assert filled_dims(N("Concat", ["x", "y"], ["c", "extra"]), DIMS.get, _none) == [[None, 3, 8], None]


def test_slice_bounds_as_attributes_before_opset_10_and_steps_as_an_input() -> None:
    whole = N("Slice", ["x"], ["y"], starts=[0], ends=[1 << 62], axes=[0])
    assert filled_dims(whole, DIMS.get, _none) == [["N", 3, 8]]
    cut = N("Slice", ["x"], ["y"], starts=[0], ends=[1 << 31 - 2], axes=[0])
    assert filled_dims(cut, DIMS.get, _none) == [[None, 3, 8]]
    at_the_end = N("Slice", ["x"], ["y"], starts=[0], ends=[2**31 - 1], axes=[-3])  # TO_THE_END itself
    assert filled_dims(at_the_end, DIMS.get, _none) == [["N", 3, 8]]
    stepped = N("Slice", ["x", "s", "e", "a", "st"], ["y"])
    values = {1: np.array([0]), 2: np.array([1 << 62]), 3: np.array([0]), 4: np.array([2])}
    assert filled_dims(stepped, DIMS.get, values.get) == [[None, 3, 8]]
    outside = N("Slice", ["x"], ["y"], starts=[0], ends=[1], axes=[3])  # no such axis: nothing cut
    assert filled_dims(outside, DIMS.get, _none) == [["N", 3, 8]]


def test_transpose_and_unsqueeze_at_the_ranks_bounds() -> None:
    assert filled_dims(N("Transpose", ["x"], ["t", "extra"], perm=[2, 0, 1]), DIMS.get, _none) == [
        [8, "N", 3],
        None,
    ]
    assert filled_dims(N("Unsqueeze", ["x"], ["u"], axes=[-4]), DIMS.get, _none) == [[1, "N", 3, 8]]
    assert filled_dims(N("Unsqueeze", ["x"], ["u"], axes=[4]), DIMS.get, _none) == [None]  # out of range
    assert filled_dims(N("Unsqueeze", ["x"], ["u", "extra"], axes=[3]), DIMS.get, _none) == [
        ["N", 3, 8, 1],
        None,
    ]


def test_an_stft_keeps_the_batch_and_its_last_axis_of_two() -> None:
    assert filled_dims(N("STFT", ["sig", "step"], ["f", "extra"]), DIMS.get, _none) == [
        ["N", None, None, 2],
        None,
    ]


def test_a_broadcast_of_ones_and_unary_ops_fill_their_first_output_only() -> None:
    assert filled_dims(N("Add", ["one", "one"], ["o", "extra"]), DIMS.get, _none) == [[1, 1, 1], None]
    assert filled_dims(N("Add", ["x", "s"], ["o"]), DIMS.get, _none) == [["N", None, 8]]  # 3 against N
    assert filled_dims(N("Relu", ["x"], ["r", "extra"]), DIMS.get, _none) == [["N", 3, 8], None]
